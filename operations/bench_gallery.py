"""``fecapass bench-search``'s writes and whole-path figures with the generated gallery stored: the gallery's people
and faces in the main database (COPY), the index stage's enroll timed through its handler, and the API's search
timed from upload to answer through the real stages (operations.bench's pipeline launcher and latency helper)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psycopg
import redis
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool
from pydantic import SecretStr

from common import clients
from common.db.main_repository import MainRepository
from common.db.vector_repository import HnswParameters, VectorRepository
from common.settings import S3Settings
from indexer.binary_index import BinaryIndex
from indexer.gallery_feed import DEFAULT_COLLECTION_ID, GalleryFeed
from indexer.stage import IndexHandler
from operations.bench import SEARCH_PHOTO, BenchConfig, percentile, search_latency, start_pipeline
from operations.search_report import EndToEndMeasurement, EnrollMeasurement
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from schemas.results import EnrollResult
from schemas.streams import AlignedFace, EmbeddedMessage, JobKind, Stage, encode_embeddings

# Enrolls run once untimed first: the pools' connections and PostgreSQL's plans are made then.
WARM_ENROLLS = 5
WARM_SEARCHES = 3
BINARY_ENROLL = "binary (no HNSW index)"


class Databases(NamedTuple):
    """The two databases the gallery is written to (the run's own servers' unless a test gives others)."""

    main: str
    vector: str

    @classmethod
    def of(cls, services: LocalServices) -> Databases:
        return cls(services.dsn(MAIN_DB), services.dsn(VECTOR_DB))


def user_id_of(person: int) -> int:
    """The main database's user of generated person ``person`` (identities start at 1)."""
    return person + 1


def write_main_gallery(
    databases: Databases, pack: str, people: int, faces: int, collections: np.ndarray | None = None
) -> float:
    """Users and served face rows as the index stage leaves them: face ``i`` (the vector database's face id) is a
    photo of person ``i % people``, in collection ``collections[i]`` (default: every one in the default
    collection; a person's faces share one). Seconds taken."""
    started = time.perf_counter()

    def collection(face: int) -> int:
        return DEFAULT_COLLECTION_ID if collections is None else int(collections[face])

    with psycopg.connect(databases.main, autocommit=True) as conn:
        conn.execute("TRUNCATE faces, users, erased_faces, erased_users, face_rejections")
        for other in sorted({collection(face) for face in range(min(people, faces))} - {DEFAULT_COLLECTION_ID}):
            conn.execute(
                "INSERT INTO collections (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (other, f"bench-{other}")
            )
        with conn.cursor().copy("COPY users (id, email, full_name, collection_id) FROM STDIN") as copy:
            for person in range(people):
                email, name = f"person{person}@bench.example", f"Person {person}"
                copy.write_row((user_id_of(person), email, name, collection(person)))
        columns = "id, user_id, job_id, image_key, crop_key, box, det_score, faces_seen, model_pack, served"
        with conn.cursor().copy(f"COPY faces ({columns}, collection_id) FROM STDIN") as copy:
            for face in range(faces):
                job, owner = f"bench-{face}", user_id_of(face % people)
                keys = (f"originals/{job}", f"crops/{job}/0.png")
                copy.write_row((face, owner, job, *keys, "{1,2,3,4}", 0.9, 1, pack, True, collection(face)))
        # New rows (the enrolls timed) get identities after the generated ones.
        conn.execute("SELECT setval(pg_get_serial_sequence('users', 'id'), %s)", (people,))
        conn.execute("SELECT setval(pg_get_serial_sequence('faces', 'id'), %s)", (faces,))
        conn.execute("VACUUM ANALYZE users")
        conn.execute("VACUUM ANALYZE faces")
    return time.perf_counter() - started


def s3_settings(services: LocalServices) -> S3Settings:
    return S3Settings(
        s3_endpoint=services.s3_endpoint,
        s3_access_key=SecretStr(services.credentials.s3_access_key),
        s3_secret_key=SecretStr(services.credentials.s3_secret_key),
        s3_bucket=services.bucket,
    )


@contextmanager
def index_handler(services: LocalServices, databases: Databases, hnsw: HnswParameters | None) -> Iterator[IndexHandler]:
    """The index stage's handler as indexer/worker.py builds it, on these servers: ``hnsw`` None for the binary
    index (no HNSW index built), else pgvector's graph with those parameters."""
    client = redis.Redis.from_url(services.redis_url)
    feed = GalleryFeed(client, stream=f"fecapass:gallery:bench:enroll:{uuid.uuid4().hex[:8]}")
    try:
        with (
            ConnectionPool(databases.main, min_size=1, max_size=2, open=True) as main_pool,
            ConnectionPool(
                databases.vector, min_size=1, max_size=2, open=True, configure=register_vector
            ) as vector_pool,
        ):
            parameters = hnsw or HnswParameters(build=False)
            vectors = VectorRepository(vector_pool, parameters)
            yield IndexHandler(
                MainRepository(main_pool),
                vectors,
                clients.object_store(s3_settings(services)),
                presign=lambda key: f"http://127.0.0.1/{key}",
                feed=feed,
                binary=BinaryIndex(vectors, feed, 200) if hnsw is None else None,
            )
    finally:
        client.close()


def enroll_message(pack: str, user_id: int, embedding: np.ndarray) -> EmbeddedMessage:
    """What the embed stage sends the index stage for an enroll of one face."""
    job_id = uuid.uuid4().hex
    face = AlignedFace(box=(10, 20, 110, 140), keypoints=[(0, 0)] * 5, score=0.97, source=0, crop_key=f"c/{job_id}")
    return EmbeddedMessage(
        job_id=job_id,
        kind=JobKind.ENROLL,
        image_key=f"originals/{job_id}",
        pack=pack,
        crop_size=112,
        faces=[face],
        faces_seen=1,
        embeddings=encode_embeddings(embedding.reshape(1, -1)),
        dim=int(embedding.shape[0]),
        user_id=user_id,
    )


def enroll_latency(
    services: LocalServices,
    databases: Databases,
    pack: str,
    label: str,
    hnsw: HnswParameters | None,
    photos: np.ndarray,
    people: np.ndarray,
) -> EnrollMeasurement:
    """``photos[k]`` (a new photo of stored person ``people[k]``) enrolled through the index stage's handler, one at
    a time, each timed; the faces are erased again so the gallery stays the size measured."""
    latencies: list[float] = []
    enrolled: list[int] = []
    with index_handler(services, databases, hnsw) as handler:
        try:
            for k, (photo, person) in enumerate(zip(photos, people, strict=True)):
                message = enroll_message(pack, user_id_of(int(person)), photo)
                started = time.perf_counter()
                outcome = handler.handle(message)
                seconds = time.perf_counter() - started
                stored = outcome.result.stored if outcome.result is not None else None
                assert isinstance(stored, EnrollResult), f"an enroll that stored no face: {outcome}"
                enrolled.append(stored.face_id)
                if k >= WARM_ENROLLS:
                    latencies.append(seconds * 1000)
        finally:
            handler.vectors.delete_faces(enrolled)
            _delete_main_faces(databases, enrolled)
    return EnrollMeasurement(
        index=label,
        enrolls=len(latencies),
        p50_ms=statistics.median(latencies),
        p99_ms=percentile(latencies, 99),
    )


def _delete_main_faces(databases: Databases, face_ids: list[int]) -> None:
    with psycopg.connect(databases.main, autocommit=True) as conn:
        conn.execute("DELETE FROM faces WHERE id = ANY(%s)", (face_ids,))


def api_search_latency(
    services: LocalServices, photos_dir: Path, model_root: Path, pack: str, searches: int, data_dir: Path
) -> EndToEndMeasurement:
    """The API and one process per stage (the run's pack, the binary index) started by operations.bench's launcher
    on the run's servers; ``searches`` sequential searches of one photo, after a few untimed ones (the index
    process loads every code when it starts)."""
    config = BenchConfig(photos_dir, model_root, pack)
    photo = (photos_dir / SEARCH_PHOTO).read_bytes()
    # The binary index whatever this shell sets: in hnsw mode the index process would build the graph first (hours).
    binary = {"FECAPASS_SEARCH_INDEX": "binary", "FECAPASS_HNSW_INDEX": "false"}
    running = start_pipeline(config, data_dir, list(Stage), services=services, settings=binary)
    try:
        search_latency(running, photo, WARM_SEARCHES)
        totals, per_stage = search_latency(running, photo, searches)
    finally:
        running.installation.stop(timeout=60)
    return EndToEndMeasurement(
        searches=searches,
        photo=SEARCH_PHOTO,
        search_index="binary",
        p50_ms=statistics.median(totals),
        p99_ms=percentile(totals, 99),
        stage_p50_ms={name: statistics.median(values) for name, values in per_stage.items()},
        index_p99_ms=percentile(per_stage[Stage.INDEX.value], 99),
    )


def hnsw_label(storage: str, m: int) -> str:
    return f"hnsw {storage} m {m}"
