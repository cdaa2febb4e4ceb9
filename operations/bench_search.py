"""``fecapass bench-search``: k-NN search at scale on generated embeddings that look like real ones.

Isotropic random vectors say nothing about faces (HNSW recall behaves very differently on them), so the
embeddings are drawn from a model fitted to the pack's real embeddings of the LFW photos in ../shared: the mean,
the spread between people and the spread within one person, scaled so that generated same-person pairs have the
real median cosine. Each configuration is measured against an exact search of the same data in the same run.

A collection holding ``collection_share`` of the people (1 %) is searched too, as the product searches a
collection: the binary index scans its codes only, HNSW filters by collection with pgvector's iterative scan.
"""

from __future__ import annotations

import csv
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psycopg
import redis
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg_pool import ConnectionPool

from common.db.migrate import apply_migrations
from common.db.vector_repository import (
    HnswParameters,
    PackIndex,
    VectorRepository,
    index_name,
    index_statement,
    nearest_statement,
)
from common.settings import ModelSettings
from indexer.binary_index import BinaryIndex, binary_code
from indexer.gallery_feed import DEFAULT_COLLECTION_ID, Change, GalleryFeed
from indexer.stage import CANDIDATES_PER_RESULT
from operations.bench import machine, percentile
from operations.bench_gallery import (
    BINARY_ENROLL,
    WARM_ENROLLS,
    Databases,
    api_search_latency,
    enroll_latency,
    hnsw_label,
    write_main_gallery,
)
from operations.search_report import (
    BinaryMeasurement,
    EndToEndMeasurement,
    EnrollMeasurement,
    FilteredMeasurement,
    GeneratedEmbeddings,
    IvfflatMeasurement,
    Measurement,
    SearchRun,
    load_results,
    rendered,
    results_path,
    save_results,
)
from operations.services import MAIN_DB, VECTOR_DB, LocalServices

# The rows are stored under the pack's own name and the pack registered active, as an installation has them: the
# end-to-end search's stages use it, and the HNSW index built here is the one the index stage would build.
BENCH_IVFFLAT = "bench_ivfflat"
SMALL_COLLECTION = 2  # the collection holding collection_share of the people; the rest are in the default one
# The product's query: `limit` people per face, read as limit * CANDIDATES_PER_RESULT nearest faces.
DEFAULT_LIMIT = 10
MAINTENANCE_WORK_MEM = "4GB"


@dataclass(frozen=True)
class SearchBenchConfig:
    lfw_dir: Path
    model_root: Path
    pack: str
    sizes: tuple[int, ...] = (100_000, 1_000_000)
    queries: int = 200
    samples_per_person: int = 5
    m_values: tuple[int, ...] = (16, 32)
    ef_construction: int = 128
    ef_search: tuple[int, ...] = (40, 100, 200, 400, 800)
    storages: tuple[str, ...] = ("vector", "halfvec")
    output: Path = Path("BENCHMARKS.md")  # its measurements go beside it (search_report.results_path)
    seed: int = 7
    fit_photos: int | None = None  # fit to this many LFW photos only (the smoke test)
    shared_buffers: str = "4GB"  # a server sized for a million embeddings; the report states it
    indexes: tuple[str, ...] = ("hnsw",)  # "hnsw" (pgvector's graph, each storage and m), "ivfflat", "binary"
    binary_candidates: tuple[int, ...] = (100, 150, 200, 400)
    ivfflat_lists: int | None = None  # None: the square root of the size (1,000 at a million)
    ivfflat_probes: tuple[int, ...] = (4, 16, 64, 256)
    enrolls: int = 0  # enrolls timed through the index stage's handler with the gallery stored (0: none)
    api_searches: int = 0  # searches timed through the real API and stages (0: none)
    photos_dir: Path = Path("../shared/faces/basic")  # the end-to-end search's photo
    collection_share: float = 0.01  # people in a small collection searched on its own; 0: no filtered case


# -- a generative model of the pack's embeddings ------------------------------------------------------------


def real_embeddings(config: SearchBenchConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pack's unit embeddings of the LFW photos (padded, face nearest the centre) and their identities,
    kept in a cache file beside the report (embedding the photos takes minutes)."""
    cache = config.output.parent / ".fecapass-bench" / f"{config.pack}-{config.fit_photos or 'all'}.npz"
    if cache.is_file():
        saved = np.load(cache)
        return saved["vectors"], saved["names"]
    vectors, names = _embed_photos(config)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, names=names)
    return vectors, names


def _embed_photos(config: SearchBenchConfig) -> tuple[np.ndarray, np.ndarray]:
    from common.packs.library import PackLibrary
    from operations.calibrate import embed_crop

    pack = PackLibrary(ModelSettings(model_pack=config.pack, model_root=config.model_root)).get()
    with (config.lfw_dir / "identities.csv").open() as handle:
        rows = [(row["file"], row["identity"]) for row in csv.DictReader(handle)][: config.fit_photos]
    vectors, names = [], []
    for file, identity in rows:
        vector = embed_crop(pack, config.lfw_dir / "images" / file)
        if vector is not None:
            vectors.append(vector)
            names.append(identity)
    return np.asarray(vectors, dtype=np.float32), np.asarray(names)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    root: np.ndarray = vectors * np.sqrt(np.clip(values, 0, None))
    return root


def _unit(rows: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return unit


@dataclass
class FaceModel:
    mean: np.ndarray
    between: np.ndarray  # square root of the covariance of people's centres
    within: np.ndarray  # square root of the covariance of one person's photos around their centre
    scale: float = 1.0
    real_same: float = 0.0  # median cosine of two photos of one person, real
    real_different: float = 0.0

    @classmethod
    def fit(cls, vectors: np.ndarray, names: np.ndarray, rng: np.random.Generator) -> FaceModel:
        people = {name: vectors[names == name] for name in np.unique(names)}
        centres = np.array([rows.mean(axis=0) for rows in people.values()])
        deviations = np.vstack(
            [
                (rows - rows.mean(axis=0)) * np.sqrt(len(rows) / (len(rows) - 1))
                for rows in people.values()
                if len(rows) > 1
            ]
        )
        within = np.cov(deviations, rowvar=False)
        between = np.cov(centres, rowvar=False)
        model = cls(vectors.mean(axis=0), _sqrt_psd(between), _sqrt_psd(within))
        same = [float(a @ b) for rows in people.values() if len(rows) > 1 for a, b in itertools.pairwise(rows)]
        pairs = rng.integers(0, len(vectors), (4000, 2))
        different = [float(vectors[i] @ vectors[j]) for i, j in pairs if names[i] != names[j]]
        model.real_same, model.real_different = float(np.median(same)), float(np.median(different))
        model._calibrate_scale(rng)
        return model

    def people(self, count: int, rng: np.random.Generator) -> np.ndarray:
        centres: np.ndarray = (
            self.mean + rng.standard_normal((count, len(self.mean))).astype(np.float32) @ self.between.T
        )
        return centres.astype(np.float32)

    def photos(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(centres.shape).astype(np.float32) @ self.within.T
        return _unit(centres + self.scale * noise)

    def same_and_different(self, rng: np.random.Generator, count: int = 2000) -> tuple[float, float]:
        centres = self.people(count, rng)
        first, second = self.photos(centres, rng), self.photos(centres, rng)
        same = float(np.median(np.sum(first * second, axis=1)))
        different = float(np.median(np.sum(first * np.roll(second, 1, axis=0), axis=1)))
        return same, different

    def _calibrate_scale(self, rng: np.random.Generator) -> None:
        """Bisect the within-person noise until generated same-person pairs match the real median cosine."""
        low, high = 0.05, 4.0
        for _ in range(25):
            self.scale = (low + high) / 2
            same, _ = self.same_and_different(np.random.default_rng(rng.integers(1 << 31)))
            low, high = (self.scale, high) if same > self.real_same else (low, self.scale)


# -- PostgreSQL ---------------------------------------------------------------------------------------------


def load(conn: psycopg.Connection, pack: str, vectors: np.ndarray, collections: np.ndarray | None = None) -> float:
    """The rows bulk-loaded (face ids 0..n-1) under ``pack``, registered as the active pack: face i is
    ``vectors[i]``, in collection ``collections[i]`` (default: every face in the default one)."""
    started = time.perf_counter()
    conn.execute("TRUNCATE face_embeddings")
    conn.execute("TRUNCATE model_packs")
    conn.execute(
        "INSERT INTO model_packs (name, dim, index_name, active) VALUES (%s, %s, %s, true)",
        (pack, vectors.shape[1], index_name(pack)),
    )
    register_vector(conn)
    statement = "COPY face_embeddings (face_id, model_pack, embedding, collection_id) FROM STDIN WITH (FORMAT BINARY)"
    with conn.cursor().copy(statement) as copy:
        copy.set_types(["int8", "text", "vector", "int8"])
        for face_id, vector in enumerate(vectors):
            collection = DEFAULT_COLLECTION_ID if collections is None else int(collections[face_id])
            copy.write_row((face_id, pack, vector, collection))
    conn.execute("VACUUM ANALYZE face_embeddings")
    return time.perf_counter() - started


@dataclass(frozen=True)
class IndexBuild:
    storage: str
    m: int
    ef_construction: int
    seconds: float
    megabytes: float


def drop_indexes(conn: psycopg.Connection, pack: str) -> None:
    for name in (index_name(pack), BENCH_IVFFLAT):
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))


def _index_mib(conn: psycopg.Connection, name: str) -> float:
    size = conn.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()
    return (size[0] if size else 0) / 2**20


def build(conn: psycopg.Connection, pack: str, storage: str, dim: int, m: int, ef_construction: int) -> IndexBuild:
    """The product's index (``vector_repository.index_statement``, its name) with these parameters."""
    drop_indexes(conn, pack)
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))
    started = time.perf_counter()
    hnsw = HnswParameters(m=m, ef_construction=ef_construction)
    conn.execute(index_statement(index_name(pack), pack, PackIndex(dim, storage), hnsw))
    seconds = time.perf_counter() - started
    return IndexBuild(storage, m, ef_construction, seconds, _index_mib(conn, index_name(pack)))


def build_ivfflat(conn: psycopg.Connection, pack: str, dim: int, lists: int) -> tuple[float, float]:
    """An IVFFlat index on the expression the product's query orders by (halfvec), partial on the pack as the
    product's HNSW index is: (build seconds, MiB)."""
    drop_indexes(conn, pack)
    conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(MAINTENANCE_WORK_MEM)))
    index = PackIndex(dim, "halfvec")
    started = time.perf_counter()
    conn.execute(
        sql.SQL(
            "CREATE INDEX {name} ON face_embeddings USING ivfflat (({expression}) {operators})"
            " WITH (lists = {lists}) WHERE model_pack = {pack}"
        ).format(
            name=sql.Identifier(BENCH_IVFFLAT),
            expression=index.expression(),
            operators=index.operators(),
            lists=sql.Literal(lists),
            pack=sql.Literal(pack),
        )
    )
    return time.perf_counter() - started, _index_mib(conn, BENCH_IVFFLAT)


def search(conn: psycopg.Connection, pack: str, storage: str, query: np.ndarray, limit: int) -> tuple[list[int], float]:
    """The product's k-NN statement (``vector_repository.nearest_statement``)."""
    statement = nearest_statement(pack, PackIndex(len(query), storage))
    started = time.perf_counter()
    rows = conn.execute(statement, {"q": query, "limit": limit}, prepare=False).fetchall()
    return [int(row[0]) for row in rows], time.perf_counter() - started


@dataclass(frozen=True)
class Truth:
    """The queries of one size and what an exact search answers them with: what every index is measured against."""

    pack: str
    queries: np.ndarray
    exact: list[tuple[np.ndarray, np.ndarray]]  # per query: the exact nearest ids and similarities
    same_person: list[set[int]]  # per query: the ids of its person's stored photos
    threshold: float
    limit: int

    @property
    def candidates(self) -> int:
        return self.limit * CANDIDATES_PER_RESULT


class PassFigures(NamedTuple):
    person_recall: float
    match_recall: float
    recall_at_10: float
    p50_ms: float
    p99_ms: float
    queries_per_second: float


SearchOne = Callable[[np.ndarray], tuple[list[int], float]]  # a query -> the face ids found, the seconds taken


def timed_searches(
    queries: np.ndarray, search_one: SearchOne, warm: int | None = None
) -> tuple[list[list[int]], list[float]]:
    """The face ids each query found and its milliseconds, after an untimed pass over the first ``warm`` queries
    (all of them unless told): right after a build the index and the rows are not all in memory yet, and cold
    reads would be charged to whichever setting is measured first."""
    for query in queries[:warm]:
        search_one(query)
    found, latencies = [], []
    for query in queries:
        ids, seconds = search_one(query)
        found.append(ids)
        latencies.append(seconds * 1000)
    return found, latencies


def pass_figures(found: list[list[int]], latencies: list[float], truth: Truth) -> PassFigures:
    """The recall of the faces each query of ``truth`` found, and the latencies (ms) of those searches."""
    person, match, at10 = recall_figures(found, truth)
    return PassFigures(
        person_recall=person,
        match_recall=match,
        recall_at_10=at10,
        p50_ms=statistics.median(latencies),
        p99_ms=percentile(latencies, 99),
        queries_per_second=1000 / statistics.mean(latencies),
    )


def timed_pass(conn: psycopg.Connection, truth: Truth, storage: str) -> PassFigures:
    """Every query through the product's k-NN statement under the session's settings now."""
    found, latencies = timed_searches(
        truth.queries, lambda query: search(conn, truth.pack, storage, query, truth.candidates)
    )
    return pass_figures(found, latencies, truth)


def measure(conn: psycopg.Connection, built: IndexBuild, truth: Truth, ef_values: tuple[int, ...]) -> list[Measurement]:
    measured = []
    for ef in ef_values:
        conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
        figures = timed_pass(conn, truth, built.storage)
        measured.append(
            Measurement(
                storage=built.storage,
                m=built.m,
                ef_construction=built.ef_construction,
                ef_search=ef,
                build_seconds=built.seconds,
                index_mib=built.megabytes,
                **figures._asdict(),
            )
        )
    return measured


def measure_ivfflat(
    conn: psycopg.Connection, truth: Truth, dim: int, lists: int, probes: tuple[int, ...]
) -> list[IvfflatMeasurement]:
    seconds, megabytes = build_ivfflat(conn, truth.pack, dim, lists)
    measured = []
    try:
        for probe in probes:
            conn.execute(sql.SQL("SET ivfflat.probes = {}").format(sql.Literal(probe)))
            figures = timed_pass(conn, truth, "halfvec")
            measured.append(
                IvfflatMeasurement(
                    lists=lists, probes=probe, build_seconds=seconds, index_mib=megabytes, **figures._asdict()
                )
            )
    finally:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(BENCH_IVFFLAT)))
        conn.execute("RESET ivfflat.probes")
    return measured


def ivfflat_lists(config: SearchBenchConfig, size: int) -> int:
    """pgvector's advice: rows / 1000 up to a million rows; sqrt(rows) is the usual choice at a million (1,000)."""
    return config.ivfflat_lists or max(1, round(size**0.5))


def exact_neighbours(stored: np.ndarray, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Brute force in numpy: the truth every index configuration is measured against."""
    found = []
    for start in range(0, len(queries), 50):
        sims = queries[start : start + 50] @ stored.T
        # A small collection may hold fewer than k faces: every one is a candidate then.
        top = np.argpartition(-sims, min(k, stored.shape[0] - 1), axis=1)[:, :k]
        for row, idx in zip(sims, top, strict=True):
            order = idx[np.argsort(-row[idx])]
            found.append((order, row[order]))
    return found


def exact_scan_ms(conn: psycopg.Connection, pack: str, queries: np.ndarray, limit: int) -> float:
    conn.execute("SET enable_indexscan = off")
    try:
        times = [search(conn, pack, "vector", query, limit)[1] * 1000 for query in queries[:10]]
    finally:
        conn.execute("SET enable_indexscan = on")
    return statistics.median(times)


# -- the run ------------------------------------------------------------------------------------------------


def run(config: SearchBenchConfig) -> Path:
    """Measure each size in turn; each size's run is saved and the report rendered as soon as it is done (the 1M
    run takes long, and a smaller size's figures should not wait for it or be lost with it)."""
    from common.packs.catalog import default_threshold

    rng = np.random.default_rng(config.seed)
    real, names = real_embeddings(config)
    model = FaceModel.fit(real, names, rng)
    same, different = model.same_and_different(rng)
    embeddings = GeneratedEmbeddings(
        pack=config.pack,
        dim=len(model.mean),
        fitted_to=str(config.lfw_dir),
        real_embeddings=len(real),
        people=len(set(names.tolist())),
        real_same=model.real_same,
        generated_same=same,
        real_different=model.real_different,
        generated_different=different,
        photos_per_person=config.samples_per_person,
    )
    threshold = default_threshold(config.pack)
    where = results_path(config.output)
    with tempfile.TemporaryDirectory() as tmp:
        services = LocalServices(Path(tmp), durable=False, postgres_settings={"shared_buffers": config.shared_buffers})
        try:
            _start(services, config)
            with psycopg.connect(services.dsn(VECTOR_DB), autocommit=True) as conn:
                for size in config.sizes:
                    started = time.perf_counter()
                    figures = _measure_size(conn, config, model, size, threshold, rng, services, Path(tmp))
                    hnsw = "hnsw" in config.indexes
                    measured = SearchRun(
                        size=size,
                        storages=config.storages if hnsw else (),
                        m_values=config.m_values if hnsw else (),
                        ef_construction=config.ef_construction,
                        finished_at=datetime.now(UTC),
                        machine=machine(),
                        embeddings=embeddings,
                        queries=config.queries,
                        limit=DEFAULT_LIMIT,
                        candidates_per_result=CANDIDATES_PER_RESULT,
                        threshold=threshold,
                        shared_buffers=config.shared_buffers,
                        maintenance_work_mem=MAINTENANCE_WORK_MEM,
                        warmed=True,  # timed_pass() runs each setting's queries once untimed first
                        load_seconds=figures.load_seconds,
                        exact_scan_ms=figures.exact_scan_ms,
                        own_share=figures.own_share,
                        run_seconds=time.perf_counter() - started,
                        measurements=tuple(figures.measurements),
                        binary=tuple(figures.binary),
                        ivfflat=tuple(figures.ivfflat),
                        main_rows_seconds=figures.main_rows_seconds,
                        enroll=tuple(figures.enroll),
                        end_to_end=figures.end_to_end,
                        collection_share=config.collection_share if figures.filtered else None,
                        collection_faces=figures.collection_faces if figures.filtered else None,
                        filtered=tuple(figures.filtered),
                    )
                    results = load_results(where).with_run(measured)
                    save_results(where, results)
                    existing = config.output.read_text() if config.output.exists() else ""
                    config.output.write_text(rendered(existing, results))
        finally:
            services.stop()
    return config.output


def _start(services: LocalServices, config: SearchBenchConfig) -> None:
    """PostgreSQL always; Valkey for the gallery feed; S3 and the main database for enrolls and the API."""
    writes = config.enrolls > 0 or config.api_searches > 0
    services.start_postgres()
    if "binary" in config.indexes or writes:
        services.start_valkey()
    if writes:
        services.start_s3()
        apply_migrations(services.dsn(MAIN_DB), "main")
    apply_migrations(services.dsn(VECTOR_DB), "vector")


class SizeFigures(NamedTuple):
    load_seconds: float
    exact_scan_ms: float
    own_share: float  # of the exact candidates at or above the threshold, photos of the query's person
    measurements: list[Measurement]
    binary: list[BinaryMeasurement]
    ivfflat: list[IvfflatMeasurement]
    main_rows_seconds: float | None
    enroll: list[EnrollMeasurement]
    end_to_end: EndToEndMeasurement | None
    collection_faces: int
    filtered: list[FilteredMeasurement]


def recall_figures(found: list[list[int]], truth: Truth) -> tuple[float, float, float]:
    """Person recall, match recall and recall@10 of the faces each query found."""
    person, at10, match_found, match_total = [], [], 0, 0
    for ids_found, (ids, sims), own in zip(found, truth.exact, truth.same_person, strict=True):
        wanted = set(ids[sims >= truth.threshold].tolist())
        match_total += len(wanted)
        match_found += len(wanted & set(ids_found))
        at10.append(len(set(ids[:10].tolist()) & set(ids_found[:10])) / min(10, max(1, len(ids))))
        person.append(len(own & set(ids_found)) / len(own))
    return float(np.mean(person)), match_found / match_total if match_total else 1.0, float(np.mean(at10))


def filtered_search(
    conn: psycopg.Connection, pack: str, storage: str, query: np.ndarray, limit: int
) -> tuple[list[int], float]:
    """The product's k-NN statement in one collection (``nearest_statement``, in_collection), re-sorted by the
    full-precision similarity as ``VectorRepository.nearest`` does after a relaxed-order scan."""
    statement = nearest_statement(pack, PackIndex(len(query), storage), in_collection=True)
    started = time.perf_counter()
    rows = conn.execute(
        statement, {"q": query, "limit": limit, "collection": SMALL_COLLECTION}, prepare=False
    ).fetchall()
    ordered = [int(face_id) for face_id, _ in sorted(rows, key=lambda row: (-float(row[1]), int(row[0])))]
    return ordered, time.perf_counter() - started


def measure_filtered_hnsw(conn: psycopg.Connection, built: IndexBuild, truth: Truth) -> FilteredMeasurement:
    """The product's search in the small collection on this build, at the product's ef_search."""
    product = HnswParameters()
    candidates = truth.candidates
    conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(max(product.ef_search, candidates))))
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    conn.execute(sql.SQL("SET hnsw.max_scan_tuples = {}").format(sql.Literal(product.max_scan_tuples)))
    try:
        found, latencies = timed_searches(
            truth.queries, lambda query: filtered_search(conn, truth.pack, built.storage, query, candidates)
        )
    finally:
        conn.execute("SET hnsw.iterative_scan = off")
    return FilteredMeasurement(
        index="hnsw",
        configuration=f"{built.storage} m {built.m} ef_search {max(product.ef_search, candidates)}",
        **pass_figures(found, latencies, truth)._asdict(),
    )


def _small_collection(
    config: SearchBenchConfig,
    model: FaceModel,
    people: np.ndarray,
    stored: np.ndarray,
    rng: np.random.Generator,
    threshold: float,
) -> tuple[np.ndarray | None, Truth | None]:
    """The collection of each stored face (every ``1 / collection_share``-th person in SMALL_COLLECTION) and
    the queries of people of that collection, with the exact search of the collection; (None, None) without a
    filtered case."""
    if config.collection_share <= 0:
        return None, None
    step = max(1, round(1 / config.collection_share))
    small_people = np.flatnonzero(np.arange(len(people)) % step == 0)
    collections = np.where(np.arange(len(stored)) % len(people) % step == 0, SMALL_COLLECTION, DEFAULT_COLLECTION_ID)
    in_small = np.flatnonzero(collections == SMALL_COLLECTION)
    chosen = small_people[rng.integers(0, len(small_people), config.queries)]
    vectors = model.photos(people[chosen], rng)
    exact = [
        (in_small[ids], sims)
        for ids, sims in exact_neighbours(stored[in_small], vectors, DEFAULT_LIMIT * CANDIDATES_PER_RESULT)
    ]
    same = [{int(p) + k * len(people) for k in range(config.samples_per_person)} for p in chosen]
    return collections, Truth(config.pack, vectors, exact, same, threshold, DEFAULT_LIMIT)


def _measure_size(
    conn: psycopg.Connection,
    config: SearchBenchConfig,
    model: FaceModel,
    size: int,
    threshold: float,
    rng: np.random.Generator,
    services: LocalServices,
    scratch: Path,
) -> SizeFigures:
    limit = DEFAULT_LIMIT
    dim = len(model.mean)
    people = model.people(size // config.samples_per_person, rng)
    stored = np.vstack([model.photos(people, rng) for _ in range(config.samples_per_person)])
    collections, small = _small_collection(config, model, people, stored, rng, threshold)
    if collections is None:
        chosen = rng.integers(0, len(people), config.queries)
    else:  # the gallery's searches are of people of the default collection, as the binary index scans only it
        default_people = np.flatnonzero(collections[: len(people)] == DEFAULT_COLLECTION_ID)  # face p: person p
        chosen = default_people[rng.integers(0, len(default_people), config.queries)]
    queries = model.photos(people[chosen], rng)
    exact = exact_neighbours(stored, queries, limit * CANDIDATES_PER_RESULT)
    # Photo i of the stored set is of person i % len(people).
    same_person = [{int(p) + k * len(people) for k in range(config.samples_per_person)} for p in chosen]
    truth = Truth(config.pack, queries, exact, same_person, threshold, limit)
    above = [(ids[sims >= threshold] % len(people)) for ids, sims in exact]
    own_share = sum(int((a == p).sum()) for a, p in zip(above, chosen, strict=True)) / max(
        1, sum(len(a) for a in above)
    )
    load_seconds = load(conn, config.pack, stored, collections)
    del stored
    conn.execute("ANALYZE face_embeddings")
    scan = exact_scan_ms(conn, config.pack, queries, limit * CANDIDATES_PER_RESULT)
    main_rows = None
    if config.enrolls or config.api_searches:
        main_rows = write_main_gallery(Databases.of(services), config.pack, len(people), size, collections)
    # New photos of people of the default collection, enrolled there as a job without a collection is.
    newcomers = chosen[rng.integers(0, len(chosen), config.enrolls + WARM_ENROLLS)]
    new_photos = model.photos(people[newcomers], rng)
    measurements, filtered, enroll = [], [], []
    if "hnsw" in config.indexes:
        for storage in config.storages:
            for m in config.m_values:
                built = build(conn, config.pack, storage, dim, m, config.ef_construction)
                measurements += measure(conn, built, truth, config.ef_search)
                if small is not None:
                    filtered.append(measure_filtered_hnsw(conn, built, small))
        if config.enrolls:  # each insert maintains the graph built last, as the index stage's would
            hnsw = HnswParameters(m=config.m_values[-1], ef_construction=config.ef_construction)
            label = hnsw_label(config.storages[-1], config.m_values[-1])
            enroll.append(
                enroll_latency(services, Databases.of(services), config.pack, label, hnsw, new_photos, newcomers)
            )
    drop_indexes(conn, config.pack)
    ivfflat = []
    if "ivfflat" in config.indexes:
        ivfflat = measure_ivfflat(conn, truth, dim, ivfflat_lists(config, size), config.ivfflat_probes)
    binary = []
    if "binary" in config.indexes:
        trial = BinaryTrial(services, truth, dim, small)
        for candidates in config.binary_candidates:
            whole, in_collection = trial.measure(candidates, model, people, rng)
            binary.append(whole)
            filtered += [in_collection] if in_collection is not None else []
    if config.enrolls:  # the product's default: no HNSW index to maintain
        enroll.append(
            enroll_latency(services, Databases.of(services), config.pack, BINARY_ENROLL, None, new_photos, newcomers)
        )
    end_to_end = None
    if config.api_searches:
        end_to_end = api_search_latency(
            services, config.photos_dir, config.model_root, config.pack, config.api_searches, scratch
        )
    small_faces = 0 if collections is None else int((collections == SMALL_COLLECTION).sum())
    return SizeFigures(
        load_seconds,
        scan,
        own_share,
        measurements,
        binary,
        ivfflat,
        main_rows,
        enroll,
        end_to_end,
        small_faces,
        filtered,
    )


@dataclass
class BinaryTrial:
    """The product's binary-code index (indexer/binary_index.py) over the bench's rows: loaded from PostgreSQL as a
    starting index process does, then the product's search (scan, then PostgreSQL's ranking) timed per query."""

    services: LocalServices
    truth: Truth
    dim: int
    small: Truth | None = None  # searches in the small collection

    def measure(
        self, candidates: int, model: FaceModel, people: np.ndarray, rng: np.random.Generator
    ) -> tuple[BinaryMeasurement, FilteredMeasurement | None]:
        wanted, pack = self.truth.candidates, self.truth.pack
        client = redis.Redis.from_url(self.services.redis_url)
        feed = GalleryFeed(client, stream=f"fecapass:gallery:bench:{candidates}")
        with ConnectionPool(
            self.services.dsn(VECTOR_DB), min_size=1, max_size=2, open=True, configure=register_vector
        ) as pool:
            vectors = VectorRepository(pool)
            index = BinaryIndex(vectors, feed, candidates)
            started = time.perf_counter()
            gallery = index.load(pack, self.dim)
            codes = gallery.codes(DEFAULT_COLLECTION_ID)  # what a search of the gallery's people scans
            load_seconds = time.perf_counter() - started
            started = time.perf_counter()
            index.nearest(pack, self.truth.queries[0], wanted)
            cold_ms = (time.perf_counter() - started) * 1000
            for query in self.truth.queries[:20]:  # warm: PostgreSQL's pages of the rows ranked
                index.nearest(pack, query, wanted)
            found, latencies, scans, ranks = [], [], [], []
            for query in self.truth.queries:
                started = time.perf_counter()
                found.append([n.face_id for n in index.nearest(pack, query, wanted)])
                latencies.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                chosen = codes.nearest(binary_code(query), candidates)
                scans.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                vectors.rank(pack, query, chosen)
                ranks.append((time.perf_counter() - started) * 1000)
            findable = self._findable_ms(index, feed, model, people, rng)
            held = sum(len(each) for each in gallery.collections.values())
            memory_mib = held * (codes.index.code_size + 8) / 2**20  # codes and their int64 ids
            in_collection = self._filtered(index, candidates, wanted)
        client.close()
        return BinaryMeasurement(
            candidates=candidates,
            load_seconds=load_seconds,
            memory_mib=memory_mib,
            cold_first_query_ms=cold_ms,
            **pass_figures(found, latencies, self.truth)._asdict(),
            scan_p50_ms=statistics.median(scans),
            rank_p50_ms=statistics.median(ranks),
            findable_ms=findable,
        ), in_collection

    def _filtered(self, index: BinaryIndex, candidates: int, wanted: int) -> FilteredMeasurement | None:
        """The product's search in the small collection: that collection's codes scanned, then ranked."""
        if self.small is None:
            return None

        def nearest(query: np.ndarray) -> tuple[list[int], float]:
            started = time.perf_counter()
            found = [n.face_id for n in index.nearest(self.truth.pack, query, wanted, SMALL_COLLECTION)]
            return found, time.perf_counter() - started

        # Warmed by 20 queries, as the gallery's searches are.
        found, latencies = timed_searches(self.small.queries, nearest, warm=20)
        return FilteredMeasurement(
            index="binary",
            configuration=f"candidates {candidates}",
            **pass_figures(found, latencies, self.small)._asdict(),
        )

    def _findable_ms(
        self, index: BinaryIndex, feed: GalleryFeed, model: FaceModel, people: np.ndarray, rng: np.random.Generator
    ) -> float:
        """A new photo stored and published as the index stage does; the time until the next search returns it."""
        pack = self.truth.pack
        photo = model.photos(people[:1], rng)[0]
        face_id = 10**12 + int(rng.integers(1 << 30))
        with psycopg.connect(self.services.dsn(VECTOR_DB), autocommit=True) as conn:
            register_vector(conn)
            conn.execute(
                "INSERT INTO face_embeddings (face_id, model_pack, embedding) VALUES (%s, %s, %s)",
                (face_id, pack, photo),
            )
            started = time.perf_counter()
            feed.publish(Change.ADD, pack, [face_id])
            found = index.nearest(pack, photo, 1)
            seconds = time.perf_counter() - started
            conn.execute("DELETE FROM face_embeddings WHERE face_id = %s", (face_id,))
        assert found and found[0].face_id == face_id, "a published face was not found by the next search"
        return seconds * 1000
