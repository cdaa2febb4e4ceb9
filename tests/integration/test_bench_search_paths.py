"""`fecapass bench-search`'s IVFFlat and enroll-latency paths at a tiny size on the real servers (databases of their
own): what they measure is really there, and they leave the gallery as they found it. Figures are not asserted."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from common.db.vector_repository import HnswParameters, index_name
from common.settings import DatabaseSettings
from operations.bench_gallery import WARM_ENROLLS, Databases, enroll_latency, write_main_gallery
from operations.bench_search import BENCH_IVFFLAT, Truth, build, exact_neighbours, load, measure_ivfflat
from operations.services import LocalServices
from tests.conftest import unit

DIM = 32
PEOPLE = 40
PHOTOS = 5  # per person: stored photo i is of person i % PEOPLE
PACK = "benchpaths"


@pytest.fixture(scope="module")
def databases(module_databases: DatabaseSettings) -> Databases:
    return Databases(module_databases.main_db_dsn.get_secret_value(), module_databases.vector_db_dsn.get_secret_value())


@pytest.fixture(scope="module")
def centres() -> np.ndarray:
    return unit(np.random.default_rng(11).normal(size=(PEOPLE, DIM)))


def photos_of(centres: np.ndarray, people: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=(len(people), DIM)) * 0.05
    return unit(centres[people] + noise)


@pytest.fixture
def vector_conn(databases: Databases, centres: np.ndarray) -> Iterator[psycopg.Connection]:
    """The gallery loaded as the benchmark loads it."""
    stored = np.vstack([photos_of(centres, np.arange(PEOPLE), seed) for seed in range(PHOTOS)])
    with psycopg.connect(databases.vector, autocommit=True) as conn:
        load(conn, PACK, stored)
        yield conn


def indexes(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'face_embeddings' AND indexname <> 'face_embeddings_pkey'"
    ).fetchall()
    return {str(row[0]) for row in rows}


def test_ivfflat_is_measured_against_the_exact_search_and_dropped_after(
    vector_conn: psycopg.Connection, centres: np.ndarray
) -> None:
    stored = np.vstack([photos_of(centres, np.arange(PEOPLE), seed) for seed in range(PHOTOS)])
    people = np.arange(0, PEOPLE, 4)
    queries = photos_of(centres, people, seed=99)
    exact = exact_neighbours(stored, queries, 40)
    own = [{int(p) + k * PEOPLE for k in range(PHOTOS)} for p in people]
    truth = Truth(PACK, queries, exact, own, threshold=0.5, limit=10)
    rows = measure_ivfflat(vector_conn, truth, DIM, lists=8, probes=(1, 8))
    assert [(row.lists, row.probes) for row in rows] == [(8, 1), (8, 8)]
    # Every cell probed: the index scans every row, so it must find exactly what the exact search finds.
    assert rows[1].person_recall == 1.0 and rows[1].match_recall == 1.0
    assert rows[0].person_recall <= rows[1].person_recall
    assert all(row.index_mib > 0 and row.build_seconds > 0 and row.p99_ms >= row.p50_ms > 0 for row in rows)
    assert BENCH_IVFFLAT not in indexes(vector_conn)  # the next configuration measures its own index only


def counts(databases: Databases) -> tuple[int, int, int, int]:
    """Users, served faces, the faces' identity so far (main); embeddings (vector)."""
    with psycopg.connect(databases.main) as conn:
        users = conn.execute("SELECT count(*) FROM users").fetchone()
        faces = conn.execute("SELECT count(*) FROM faces WHERE served").fetchone()
        issued = conn.execute("SELECT last_value FROM faces_id_seq").fetchone()
    with psycopg.connect(databases.vector) as conn:
        embeddings = conn.execute("SELECT count(*) FROM face_embeddings").fetchone()
    assert users and faces and issued and embeddings
    return int(users[0]), int(faces[0]), int(issued[0]), int(embeddings[0])


def test_enroll_latency_runs_the_index_stage_on_the_stored_gallery_and_leaves_it_as_it_was(
    services: LocalServices, databases: Databases, vector_conn: psycopg.Connection, centres: np.ndarray
) -> None:
    write_main_gallery(databases, PACK, PEOPLE, PEOPLE * PHOTOS)
    assert counts(databases) == (PEOPLE, PEOPLE * PHOTOS, PEOPLE * PHOTOS, PEOPLE * PHOTOS)
    people = np.arange(WARM_ENROLLS + 4) % PEOPLE
    photos = photos_of(centres, people, seed=uuid.uuid4().int % 1000)

    binary = enroll_latency(services, databases, PACK, "binary", None, photos, people)
    assert binary.index == "binary" and binary.enrolls == 4 and binary.p99_ms >= binary.p50_ms > 0
    users, faces, issued, embeddings = counts(databases)
    # The enrolls really stored faces (identities were issued), and were erased again: the gallery is unchanged.
    assert (users, faces, embeddings) == (PEOPLE, PEOPLE * PHOTOS, PEOPLE * PHOTOS)
    assert issued == PEOPLE * PHOTOS + len(people)
    assert indexes(vector_conn) == set()  # the binary mode's enroll built no HNSW index

    build(vector_conn, PACK, "halfvec", DIM, 8, 32)
    graph = enroll_latency(services, databases, PACK, "hnsw halfvec m 8", HnswParameters(8, 32), photos, people)
    assert graph.enrolls == 4
    assert indexes(vector_conn) == {index_name(PACK)}  # the graph built above was maintained, not built again
    assert counts(databases)[2] == PEOPLE * PHOTOS + 2 * len(people)
