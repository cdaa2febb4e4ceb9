"""The ``fecapass`` command: up (local mode), api, worker STAGE, migrate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import settings as s
from common.logs import configure_logging
from common.packs import ModelPackError
from operations import models_cli
from operations.local import LocalModeError
from operations.services import ServiceError, interrupt_on_sigterm
from schemas.streams import Stage


def _api() -> None:
    import uvicorn

    from ingest_api.app import create_app
    from ingest_api.config import ApiConfig

    config = ApiConfig.from_env()
    uvicorn.run(
        create_app(config),
        host=config.api.api_host,
        port=config.api.api_port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


def _migrate() -> None:
    from common.db.migrate import migrate_all

    database = s.load(s.DatabaseSettings)
    applied = migrate_all(database.main_db_dsn.get_secret_value(), database.vector_db_dsn.get_secret_value())
    print("applied: " + (", ".join(applied) if applied else "nothing, already up to date"))


def _streams() -> None:
    from rich.console import Console
    from rich.table import Table

    from common import clients
    from common.metrics import stream_stats

    client = clients.redis_client(s.load(s.RedisSettings))
    table = Table(title="Fecapass streams")
    for column in ("stream", "group", "length", "consumers", "pending", "lag", "oldest pending", "dead letters"):
        table.add_column(column, justify="left" if column in ("stream", "group") else "right")
    for row in stream_stats(client):
        oldest = "-" if row.oldest_pending_seconds is None else f"{row.oldest_pending_seconds:.1f} s"
        table.add_row(
            row.stream,
            row.group,
            str(row.length),
            str(row.consumers),
            str(row.pending),
            "-" if row.lag is None else str(row.lag),
            oldest,
            str(row.dead_letters),
        )
    Console().print(table)


def _healthcheck() -> None:
    import httpx

    url = s.load(s.ObservabilitySettings).healthcheck_url
    try:
        response = httpx.get(url, timeout=4)
    except httpx.HTTPError as exc:
        raise SystemExit(f"unhealthy: {url}: {exc}") from None
    if response.status_code != 200:
        raise SystemExit(f"unhealthy: {url} answered {response.status_code}")


def _keys(args: argparse.Namespace) -> None:
    from common import clients
    from common.apikeys import new_key
    from common.db.main_repository import MainRepository

    with clients.main_db_pool(s.load(s.DatabaseSettings)) as pool:
        repository = MainRepository(pool)
        if args.action == "create":
            key, prefix, digest = new_key()
            row = repository.create_api_key(args.name, args.scope, prefix, digest)
            print(f"created key {row.id} ({row.name}, {row.scope}); it is shown only now:\n{key}")
        elif args.action == "list":
            for row in repository.list_api_keys():
                state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
                print(f"{row.id}\t{row.prefix}...\t{row.scope}\t{state}\t{row.name}")
        elif args.action == "revoke":
            if not repository.revoke_api_key(args.id):
                raise SystemExit(f"no active key with id {args.id}")
            print(f"revoked key {args.id}")


def _dlq(args: argparse.Namespace) -> None:
    from common import clients
    from operations import dlq

    client = clients.redis_client(s.load(s.RedisSettings))
    stages = [Stage(args.stage)] if getattr(args, "stage", None) else list(Stage)
    if args.action == "list":
        for stage, count in dlq.counts(client).items():
            if stage not in stages:
                continue
            print(f"{stage.dead_letter_stream}: {count}")
            for letter in dlq.entries(client, stage, count=args.count):
                fields = letter.fields
                reason = f"{fields.get('dead_error_code')}: {fields.get('dead_error')}"
                print(f"  {letter.message_id}  job {fields.get('job_id', '-')}  {reason}")
    elif args.action == "show":
        shown = dlq.find(client, Stage(args.stage), args.id)
        if shown is None:
            raise SystemExit(f"no dead letter {args.id} in {Stage(args.stage).dead_letter_stream}")
        for key, value in shown.fields.items():
            print(f"{key}: {value}")
    elif args.action == "replay":
        ttl = s.load(s.PipelineSettings).job_ttl_seconds
        replayed = 0
        for stage in stages:
            found = dlq.find(client, stage, args.id) if args.id else None
            letters = ([found] if found else []) if args.id else dlq.entries(client, stage, count=10_000)
            for letter in letters:
                print(f"{stage.stream}: replayed {letter.message_id} as {dlq.replay(client, letter, ttl)}")
                replayed += 1
        print(f"replayed {replayed}")
    elif args.action == "purge":
        for stage in stages:
            print(f"{stage.dead_letter_stream}: removed {dlq.purge(client, stage, [args.id] if args.id else None)}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fecapass", description="Self-hosted face recognition.")
    commands = root.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="local mode: embedded PostgreSQL, Valkey, S3, the API and every stage")
    up.add_argument("--data-dir", type=Path, default=Path(".fecapass"), help="kept across restarts")
    up.add_argument("--api-port", type=int, default=8000)
    up.add_argument("--postgres-port", type=int, default=5433)
    up.add_argument("--redis-port", type=int, default=6380)
    up.add_argument("--s3-port", type=int, default=9000)
    up.add_argument("--workers", type=int, default=1, help="processes per stage")
    up.add_argument("--metrics-port", type=int, default=9101, help="first stage process's metrics port; 0: off")

    commands.add_parser("api", help="run the HTTP API against external services")
    worker = commands.add_parser("worker", help="run one stage process against external services")
    worker.add_argument("stage", choices=[stage.value for stage in Stage])
    commands.add_parser("migrate", help="apply database migrations (idempotent)")
    commands.add_parser("streams", help="every stream and group: length, consumers, pending, lag, dead letters")
    commands.add_parser("healthcheck", help="exit 0 when FECAPASS_HEALTHCHECK_URL answers 200 (container check)")
    keys = commands.add_parser("keys", help="API keys (sent as X-API-Key)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--scope",
        choices=["read", "write"],
        required=True,
        help="read: search, verify, detect, read; write: also create, enroll, update and delete",
    )
    key_actions.add_parser("list", help="every key: id, prefix, scope, state, name")
    revoke = key_actions.add_parser("revoke", help="revoke a key (takes effect within 30 s)")
    revoke.add_argument("id", type=int)
    dead = commands.add_parser("dlq", help="dead-letter streams: list, show, replay, purge")
    dead_actions = dead.add_subparsers(dest="action", required=True)
    stage_names = [stage.value for stage in Stage]
    listing = dead_actions.add_parser("list", help="dead letters per stage with their reasons")
    listing.add_argument("--stage", choices=stage_names)
    listing.add_argument("--count", type=int, default=20, help="entries shown per stage")
    show = dead_actions.add_parser("show", help="every field of one dead letter")
    show.add_argument("stage", choices=stage_names)
    show.add_argument("id")
    for name, text in (("replay", "put dead letters back on their stage's stream"), ("purge", "delete dead letters")):
        action = dead_actions.add_parser(name, help=text)
        action.add_argument("--stage", choices=stage_names, help="only this stage's (default: all)")
        action.add_argument("--id", help="only this entry (needs --stage)")
    models_cli.add_commands(commands)
    bench = commands.add_parser(
        "bench", help="measure the pipeline against a plain insightface loop, write BENCHMARKS.md"
    )
    bench.add_argument("--photos-dir", type=Path, default=Path("../shared/faces/basic"))
    bench.add_argument("--photos", type=int, default=200)
    bench.add_argument("--searches", type=int, default=50)
    bench.add_argument("--uploads", type=int, default=320)
    bench.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    scale = commands.add_parser(
        "bench-search", help="k-NN search at 100k and 1M generated embeddings, vector vs halfvec, into BENCHMARKS.md"
    )
    scale.add_argument(
        "--pairs", type=Path, default=Path("../shared/faces/lfw_gray"), help="photos the model is fitted to"
    )
    scale.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    scale.add_argument("--queries", type=int, default=200)
    scale.add_argument("--m", type=int, nargs="+", default=[16, 32], help="HNSW m values to build")
    scale.add_argument("--ef-construction", type=int, default=128)
    scale.add_argument("--ef-search", type=int, nargs="+", default=[40, 100, 200, 400, 800])
    scale.add_argument("--storage", nargs="+", choices=["vector", "halfvec"], default=["vector", "halfvec"])
    scale.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    scale.add_argument("--fit-photos", type=int, help="fit the generator to this many photos only (quick runs)")
    scale.add_argument("--shared-buffers", default="4GB", help="PostgreSQL shared_buffers for the run")
    scale.add_argument(
        "--summary-only",
        action="store_true",
        help="measure nothing: rewrite the target summary from the sections already in the report",
    )
    calibrate = commands.add_parser("calibrate", help="measure the pack on LFW-style pairs, write CALIBRATION.md")
    calibrate.add_argument(
        "--pairs",
        type=Path,
        default=Path("../shared/faces/lfw_gray"),
        help="folder with pairs.tsv and images/",
    )
    calibrate.add_argument("--output", type=Path, default=Path("CALIBRATION.md"))
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logs = s.load(s.LogSettings)
    configure_logging(logs.log_level, logs.log_json)
    try:
        if args.command == "up":
            from operations.local import UpOptions, run_up

            run_up(
                UpOptions(
                    args.data_dir,
                    args.api_port,
                    args.postgres_port,
                    args.redis_port,
                    args.s3_port,
                    args.workers,
                    args.metrics_port,
                )
            )
        elif args.command == "api":
            _api()
        elif args.command == "worker":
            from operations.worker import run_worker

            run_worker(Stage(args.stage))
        elif args.command == "migrate":
            _migrate()
        elif args.command == "streams":
            _streams()
        elif args.command == "healthcheck":
            _healthcheck()
        elif args.command == "keys":
            _keys(args)
        elif args.command == "dlq":
            if getattr(args, "id", None) and not getattr(args, "stage", None):
                raise SystemExit("--id needs --stage")
            _dlq(args)
        elif args.command in ("models", "reindex"):
            models_cli.run(args)
        elif args.command == "bench":
            from operations.bench import BenchConfig
            from operations.bench import run as bench

            interrupt_on_sigterm()
            model = s.load(s.ModelSettings)
            config = BenchConfig(
                args.photos_dir,
                model.model_root,
                model.model_pack,
                args.photos,
                args.searches,
                args.uploads,
                output=args.output,
            )
            print(f"wrote {bench(config)}")
        elif args.command == "bench-search":
            from operations.bench_search import SearchBenchConfig, with_target_summary
            from operations.bench_search import run as bench_search

            if args.summary_only:
                args.output.write_text(with_target_summary(args.output.read_text()))
                print(f"wrote {args.output}")
                return
            interrupt_on_sigterm()
            model = s.load(s.ModelSettings)
            search_config = SearchBenchConfig(
                lfw_dir=args.pairs,
                model_root=model.model_root,
                pack=model.model_pack,
                sizes=tuple(args.sizes),
                queries=args.queries,
                m_values=tuple(args.m),
                ef_construction=args.ef_construction,
                ef_search=tuple(args.ef_search),
                storages=tuple(args.storage),
                output=args.output,
                fit_photos=args.fit_photos,
                shared_buffers=args.shared_buffers,
            )
            print(f"wrote {bench_search(search_config)}")
        elif args.command == "calibrate":
            from operations.calibrate import main as calibrate

            calibrate(s.load(s.ModelSettings), args.pairs, args.output)
    except (s.SettingsError, ModelPackError, LocalModeError, ServiceError) as exc:
        print(f"fecapass: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM where interrupt_on_sigterm is set: the servers were stopped on the way out.
        print("fecapass: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
