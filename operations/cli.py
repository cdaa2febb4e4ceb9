"""The ``fecapass`` command: a table of subcommands, each parser carrying its handler (``set_defaults``).

Handlers import what they run inside themselves: ``fecapass worker detect`` must load the detect stage and
nothing of the API, the other stages or the benchmarks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from common import settings as s
from common.logs import configure_logging
from common.packs import ModelPackError
from operations import models_cli
from schemas.streams import Stage

if TYPE_CHECKING:
    import redis

    from common.db.main_repository import MainRepository
    from operations.dlq import DeadLetter

    Commands = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], None]

STAGE_NAMES = [stage.value for stage in Stage]


def refuse(exc: Exception) -> NoReturn:
    """An error the user can fix (settings, a pack, a port): its message, exit 2, no traceback."""
    print(f"fecapass: {exc}", file=sys.stderr)
    raise SystemExit(2) from None


def command(commands: Commands, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help)
    parser.set_defaults(handler=handler)
    return parser


# -- services -----------------------------------------------------------------------------------------------


def _up(args: argparse.Namespace) -> None:
    from operations.local import LocalModeError, UpOptions, run_up
    from operations.services import ServiceError

    options = UpOptions(
        args.data_dir,
        args.api_port,
        args.postgres_port,
        args.redis_port,
        args.s3_port,
        args.workers,
        args.metrics_port,
    )
    try:
        run_up(options)
    except (LocalModeError, ServiceError) as exc:
        refuse(exc)


def _api(_: argparse.Namespace) -> None:
    from ingest_api.app import create_app
    from ingest_api.config import ApiConfig
    from ingest_api.server import ApiServer, server_config

    config = ApiConfig.from_env()
    server = ApiServer(server_config(config, create_app(config)))
    server.run()
    if not server.started:  # the port was taken, or start-up failed: as uvicorn.run reports it
        raise SystemExit(3)


def _worker(args: argparse.Namespace) -> None:
    from operations.worker import run_worker

    run_worker(Stage(args.stage))


def _migrate(_: argparse.Namespace) -> None:
    from common.db.migrate import migrate_all

    database = s.load(s.DatabaseSettings)
    applied = migrate_all(database.main_db_dsn.get_secret_value(), database.vector_db_dsn.get_secret_value())
    print("applied: " + (", ".join(applied) if applied else "nothing, already up to date"))


def _streams(_: argparse.Namespace) -> None:
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


def _healthcheck(args: argparse.Namespace) -> None:
    check_health(heartbeat=args.heartbeat)


def check_health(*, heartbeat: bool = False) -> None:
    """Exit 0 when healthy, else exit 1 with the reason. A stage (``heartbeat``) is healthy while its loop turns:
    the heartbeat file is fresh (its metrics thread would answer while the loop is stuck); the API when
    FECAPASS_HEALTHCHECK_URL answers 200."""
    import httpx

    observability = s.load(s.ObservabilitySettings)
    if heartbeat:
        from common.heartbeat import heartbeat_problem

        problem = heartbeat_problem(observability.heartbeat_file, observability.heartbeat_max_age_seconds)
        if problem:
            raise SystemExit(f"unhealthy: {problem}")
        return
    url = observability.healthcheck_url
    try:
        response = httpx.get(url, timeout=4)
    except httpx.HTTPError as exc:
        raise SystemExit(f"unhealthy: {url}: {exc}") from None
    if response.status_code != 200:
        raise SystemExit(f"unhealthy: {url} answered {response.status_code}")


def _add_services(commands: Commands) -> None:
    up = command(commands, "up", _up, "local mode: embedded PostgreSQL, Valkey, S3, the API and every stage")
    up.add_argument("--data-dir", type=Path, default=Path(".fecapass"), help="kept across restarts")
    up.add_argument("--api-port", type=int, default=8000)
    up.add_argument("--postgres-port", type=int, default=5433)
    up.add_argument("--redis-port", type=int, default=6380)
    up.add_argument("--s3-port", type=int, default=9000)
    up.add_argument("--workers", type=int, default=1, help="processes per stage")
    up.add_argument("--metrics-port", type=int, default=9101, help="first stage process's metrics port; 0: off")
    command(commands, "api", _api, "run the HTTP API against external services")
    worker = command(commands, "worker", _worker, "run one stage process against external services")
    worker.add_argument("stage", choices=STAGE_NAMES)
    command(commands, "migrate", _migrate, "apply database migrations (idempotent)")
    command(commands, "streams", _streams, "every stream and group: length, consumers, pending, lag, dead letters")
    health = command(
        commands, "healthcheck", _healthcheck, "exit 0 when FECAPASS_HEALTHCHECK_URL answers 200 (container check)"
    )
    health.add_argument(
        "--heartbeat",
        action="store_true",
        help="a stage: exit 0 when FECAPASS_HEARTBEAT_FILE is younger than FECAPASS_HEARTBEAT_MAX_AGE_SECONDS",
    )


# -- keys ---------------------------------------------------------------------------------------------------


@contextmanager
def _main_repository() -> Iterator[MainRepository]:
    from common import clients
    from common.db.main_repository import MainRepository

    with clients.main_db_pool(s.load(s.DatabaseSettings)) as pool:
        yield MainRepository(pool)


def _key_create(args: argparse.Namespace) -> None:
    with _main_repository() as repository:
        ids = None
        if args.collection:
            found = {name: repository.collection_named(name) for name in args.collection}
            if missing := [name for name, row in found.items() if row is None]:
                raise SystemExit(f"no such collection: {', '.join(missing)}")
            ids = [row.id for row in found.values() if row is not None]
        created = repository.create_api_key(args.name, args.scope, ids)
        row, key = created.row, created.key
        limited = f", collections {', '.join(args.collection)}" if args.collection else ""
        print(f"created key {row.id} ({row.name}, {row.scope}{limited}); it is shown only now:\n{key}")


def _key_list(_: argparse.Namespace) -> None:
    with _main_repository() as repository:
        names = {row.id: row.name for row in repository.list_collections()}
        for row in repository.list_api_keys():
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            seen = "*" if row.collection_ids is None else ",".join(names.get(i, str(i)) for i in row.collection_ids)
            print(f"{row.id}\t{row.prefix}...\t{row.scope}\t{state}\t{seen}\t{row.name}")


def _key_revoke(args: argparse.Namespace) -> None:
    with _main_repository() as repository:
        if not repository.revoke_api_key(args.id):
            raise SystemExit(f"no active key with id {args.id}")
        print(f"revoked key {args.id}")


def _add_keys(commands: Commands) -> None:
    keys = commands.add_parser("keys", help="API keys (sent as X-API-Key)")
    actions = keys.add_subparsers(dest="action", required=True)
    create = command(actions, "create", _key_create, "create a key and print it once")
    create.add_argument("--name", required=True, help="who or what uses the key")
    create.add_argument(
        "--collection",
        action="append",
        metavar="NAME",
        help="limit the key to this collection (repeat for several); default: every collection",
    )
    create.add_argument(
        "--scope",
        choices=["read", "write", "admin"],
        required=True,
        help="read: search, verify, detect, read; write: also create, enroll, update and delete;"
        " admin: also list, create and revoke API keys (the console's Keys page)",
    )
    command(actions, "list", _key_list, "every key: id, prefix, scope, state, collections (* = all), name")
    revoke = command(actions, "revoke", _key_revoke, "revoke a key (takes effect within 30 s)")
    revoke.add_argument("id", type=int)


# -- dead letters -------------------------------------------------------------------------------------------


def _redis() -> redis.Redis:
    from common import clients

    return clients.redis_client(s.load(s.RedisSettings))


def _chosen_stages(args: argparse.Namespace) -> list[Stage]:
    """--stage, or every stage."""
    return [Stage(args.stage)] if args.stage else list(Stage)


def _needs_stage_for_id(args: argparse.Namespace) -> None:
    if args.id and not args.stage:
        raise SystemExit("--id needs --stage")


def _dlq_list(args: argparse.Namespace) -> None:
    from operations import dlq

    client = _redis()
    stages = _chosen_stages(args)
    for stage, count in dlq.counts(client).items():
        if stage not in stages:
            continue
        print(f"{stage.dead_letter_stream}: {count}")
        for letter in dlq.entries(client, stage, count=args.count):
            fields = letter.fields
            reason = f"{fields.get('dead_error_code')}: {fields.get('dead_error')}"
            print(f"  {letter.message_id}  job {fields.get('job_id', '-')}  {reason}")


def _dlq_show(args: argparse.Namespace) -> None:
    from operations import dlq

    shown = dlq.find(_redis(), Stage(args.stage), args.id)
    if shown is None:
        raise SystemExit(f"no dead letter {args.id} in {Stage(args.stage).dead_letter_stream}")
    for key, value in shown.fields.items():
        print(f"{key}: {value}")


def _dlq_replay(args: argparse.Namespace) -> None:
    from operations import dlq

    _needs_stage_for_id(args)
    client = _redis()
    ttl = s.load(s.PipelineSettings).job_ttl_seconds
    replayed = 0
    for stage in _chosen_stages(args):
        letters: list[DeadLetter]
        if args.id:
            found = dlq.find(client, stage, args.id)
            letters = [found] if found else []
        else:
            letters = dlq.entries(client, stage, count=10_000)
        for letter in letters:
            print(f"{stage.stream}: replayed {letter.message_id} as {dlq.replay(client, letter, ttl)}")
            replayed += 1
    print(f"replayed {replayed}")


def _dlq_purge(args: argparse.Namespace) -> None:
    from operations import dlq

    _needs_stage_for_id(args)
    client = _redis()
    for stage in _chosen_stages(args):
        print(f"{stage.dead_letter_stream}: removed {dlq.purge(client, stage, [args.id] if args.id else None)}")


def _add_dlq(commands: Commands) -> None:
    dead = commands.add_parser("dlq", help="dead-letter streams: list, show, replay, purge")
    actions = dead.add_subparsers(dest="action", required=True)
    listing = command(actions, "list", _dlq_list, "dead letters per stage with their reasons")
    listing.add_argument("--stage", choices=STAGE_NAMES)
    listing.add_argument("--count", type=int, default=20, help="entries shown per stage")
    show = command(actions, "show", _dlq_show, "every field of one dead letter")
    show.add_argument("stage", choices=STAGE_NAMES)
    show.add_argument("id")
    for name, handler, text in (
        ("replay", _dlq_replay, "put dead letters back on their stage's stream"),
        ("purge", _dlq_purge, "delete dead letters"),
    ):
        action = command(actions, name, handler, text)
        action.add_argument("--stage", choices=STAGE_NAMES, help="only this stage's (default: all)")
        action.add_argument("--id", help="only this entry (needs --stage)")


# -- people -------------------------------------------------------------------------------------------------


def _enroll(args: argparse.Namespace) -> None:
    import os

    from operations.enroll import plan, run_command
    from operations.enroll_plan import PlanError
    from operations.enroll_run import EnrollOptions

    key = args.api_key or os.environ.get("FECAPASS_API_KEY")
    if not key:
        refuse(ValueError("an API key with write scope is needed: --api-key or FECAPASS_API_KEY"))
    try:
        photos = plan(args.dir, args.manifest)
    except PlanError as exc:
        refuse(exc)
    options = EnrollOptions(args.api, key, args.collection, args.window, args.timeout)
    raise SystemExit(run_command(photos, options, args.failures))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _add_people(commands: Commands) -> None:
    enroll = command(
        commands,
        "enroll",
        _enroll,
        "enroll a folder per person (or a CSV manifest) through the API: resumable, with progress and a summary",
    )
    enroll.add_argument(
        "dir",
        type=Path,
        help="a folder per person: named by their email (with @) or external id; or the manifest's base",
    )
    enroll.add_argument("--manifest", type=Path, help="CSV with columns file, email and/or external_id, name")
    enroll.add_argument("--api", default="http://127.0.0.1:8000", help="the API's base URL")
    enroll.add_argument("--api-key", help="a key with write scope (default: FECAPASS_API_KEY)")
    enroll.add_argument("--collection", help="the collection to enroll into (default: the API's default)")
    enroll.add_argument("--window", type=_positive_int, default=16, help="requests in flight")
    enroll.add_argument(
        "--failures",
        type=Path,
        default=Path("failures.csv"),
        help="CSV of the failed photos (file, person, code, message)",
    )
    enroll.add_argument("--timeout", type=float, default=120.0, help="seconds each photo's job may take")


# -- measurements -------------------------------------------------------------------------------------------


def _bench(args: argparse.Namespace) -> None:
    from operations.bench import LAYOUTS, BenchConfig
    from operations.bench import run as bench
    from operations.services import ServiceError, interrupt_on_sigterm

    # Checked here, not by argparse's choices: the parser must not import the benchmark (it loads onnxruntime).
    layouts = tuple(args.layouts or LAYOUTS)
    if unknown := [name for name in layouts if name not in LAYOUTS]:
        known = ", ".join(f"{name} ({layout.title})" for name, layout in LAYOUTS.items())
        refuse(LookupError(f"no layout named {', '.join(unknown)}: the layouts are {known}"))
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
        rounds=args.rounds,
        embed_seconds=args.embed_seconds,
        layouts=layouts,
    )
    try:
        print(f"wrote {bench(config)}")
    except ServiceError as exc:
        refuse(exc)


def _bench_search(args: argparse.Namespace) -> None:
    if args.summary_only:
        from operations.search_report import rewrite_report

        print(f"wrote {rewrite_report(args.output)}")
        return
    from operations.bench_search import SearchBenchConfig
    from operations.bench_search import run as bench_search
    from operations.services import ServiceError, interrupt_on_sigterm

    interrupt_on_sigterm()
    model = s.load(s.ModelSettings)
    config = SearchBenchConfig(
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
        indexes=tuple(args.index),
        binary_candidates=tuple(args.binary_candidates),
        ivfflat_lists=args.ivfflat_lists,
        ivfflat_probes=tuple(args.ivfflat_probes),
        enrolls=args.enrolls,
        api_searches=args.api_searches,
        photos_dir=args.photos_dir,
        collection_share=args.collection_share,
    )
    try:
        print(f"wrote {bench_search(config)}")
    except ServiceError as exc:
        refuse(exc)


def _calibrate(args: argparse.Namespace) -> None:
    if args.clusters:
        from operations.calibrate_clusters import main as calibrate_clusters

        calibrate_clusters(s.load(s.ModelSettings), args.pairs, args.output, args.embeddings_cache)
        return
    from operations.calibrate import main as calibrate

    calibrate(s.load(s.ModelSettings), args.pairs, args.output)


def _clusters_settle(args: argparse.Namespace) -> None:
    from common import clients
    from common.db.main_repository import MainRepository
    from common.db.unknown_faces import UnknownFaces
    from common.db.vector_repository import VectorRepository
    from common.objects import ObjectStore

    database, s3 = s.load(s.DatabaseSettings), s.load(s.S3Settings)
    main = MainRepository.at(database.main_db_dsn.get_secret_value())
    with clients.vector_db_pool(database) as pool:
        collection_id = None
        if args.collection is not None:
            found = main.collection_named(args.collection)
            if found is None:
                refuse(LookupError(f"no collection named {args.collection}"))
            collection_id = found.id
        unknown = UnknownFaces(main, VectorRepository(pool), ObjectStore(clients.minio_client(s3), s3.s3_bucket))
        report = unknown.settle(limit=args.limit, collection_id=collection_id)
    print(f"placed {report.placed}, still waiting {report.waiting}, expired and erased {report.expired}")


def _add_clusters(commands: Commands) -> None:
    clusters = commands.add_parser("clusters", help="unknown faces kept by searches, grouped for naming")
    actions = clusters.add_subparsers(dest="action", required=True)
    settle = command(
        actions,
        "settle",
        _clusters_settle,
        "erase unknown faces past their collection's retention, place again those waiting for a cluster",
    )
    settle.add_argument("--limit", type=int, default=10_000, help="waiting faces placed at most")
    settle.add_argument("--collection", help="place the waiting faces of this collection only (expiry: every one)")


def _add_measurements(commands: Commands) -> None:
    bench = command(
        commands, "bench", _bench, "measure the pipeline against a plain insightface loop, write BENCHMARKS.md"
    )
    bench.add_argument("--photos-dir", type=Path, default=Path("../shared/faces/basic"))
    bench.add_argument("--photos", type=int, default=200)
    bench.add_argument("--searches", type=int, default=50)
    bench.add_argument("--uploads", type=int, default=1000)
    bench.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of each layout's throughput and enrolls, the fastest kept",
    )
    bench.add_argument(
        "--embed-seconds", type=float, default=2.0, help="how long each batch size of the recognizer alone is timed"
    )
    bench.add_argument(
        "--layouts",
        nargs="+",
        metavar="NAME",
        help="the pipeline layouts measured, by name (default: every one; a name it does not know lists them)",
    )
    bench.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    scale = command(
        commands,
        "bench-search",
        _bench_search,
        "k-NN search at 100k and 1M generated embeddings (HNSW, IVFFlat, binary codes), enroll and end-to-end"
        " latency with them stored, into BENCHMARKS.md",
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
    scale.add_argument(
        "--output",
        type=Path,
        default=Path("BENCHMARKS.md"),
        help="the report; its measurements are kept beside it (BENCHMARKS-search.json beside BENCHMARKS.md)",
    )
    scale.add_argument(
        "--index",
        nargs="+",
        choices=["hnsw", "ivfflat", "binary"],
        default=["hnsw"],
        help="the search indexes to measure",
    )
    scale.add_argument(
        "--binary-candidates", type=int, nargs="+", default=[100, 150, 200, 400], help="codes PostgreSQL ranks"
    )
    scale.add_argument("--ivfflat-lists", type=int, help="IVFFlat cells (default: the square root of the size)")
    scale.add_argument("--ivfflat-probes", type=int, nargs="+", default=[4, 16, 64, 256], help="cells searched")
    scale.add_argument(
        "--enrolls", type=int, default=0, help="enrolls timed through the index stage with the gallery stored"
    )
    scale.add_argument(
        "--api-searches", type=int, default=0, help="searches timed upload to answer through the API and the stages"
    )
    scale.add_argument(
        "--photos-dir", type=Path, default=Path("../shared/faces/basic"), help="the end-to-end search's photo"
    )
    scale.add_argument(
        "--collection-share",
        type=float,
        default=0.01,
        help="also search a collection holding this share of the people (0: no filtered case)",
    )
    scale.add_argument("--fit-photos", type=int, help="fit the generator to this many photos only (quick runs)")
    scale.add_argument("--shared-buffers", default="4GB", help="PostgreSQL shared_buffers for the run")
    scale.add_argument(
        "--summary-only",
        action="store_true",
        help="measure nothing: render the search sections and the target summary again from the measurements file",
    )
    calibrate = command(commands, "calibrate", _calibrate, "measure the pack on LFW-style pairs, write CALIBRATION.md")
    calibrate.add_argument(
        "--pairs",
        type=Path,
        default=Path("../shared/faces/lfw_gray"),
        help="folder with pairs.tsv and images/",
    )
    calibrate.add_argument("--output", type=Path, default=Path("CALIBRATION.md"))
    calibrate.add_argument(
        "--clusters", action="store_true", help="choose the pack's unknown-face clustering parameters instead"
    )
    calibrate.add_argument(
        "--embeddings-cache", type=Path, help="with --clusters: an .npz file the photos' embeddings are kept in"
    )


# -- the command --------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="fecapass", description="Self-hosted face recognition.")
    commands = root.add_subparsers(dest="command", required=True)
    _add_services(commands)
    _add_keys(commands)
    _add_dlq(commands)
    _add_clusters(commands)
    models_cli.add_commands(commands)
    _add_people(commands)
    _add_measurements(commands)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logs = s.load(s.LogSettings)
    configure_logging(logs.log_level, logs.log_json)
    handler: Handler = args.handler
    try:
        handler(args)
    except (s.SettingsError, ModelPackError) as exc:
        refuse(exc)
    except KeyboardInterrupt:
        # Ctrl-C, or SIGTERM where interrupt_on_sigterm is set: the servers were stopped on the way out.
        print("fecapass: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
