"""Which search index an installation pays for: with FECAPASS_SEARCH_INDEX=binary (the default) the index stage builds
no HNSW index (a million-face build takes 1.6 h on 2 cores and every insert maintains it); with hnsw, or
FECAPASS_HNSW_INDEX=true, it does; `fecapass models build-index` / `drop-index` switch an existing gallery. Counted
from pg_indexes in the vector database the stage really writes to."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest

from common.db.migrate import apply_migrations
from common.db.vector_repository import index_name
from indexer.worker import index_handler
from operations import cli
from operations.services import LocalServices
from tests.conftest import new_database

DIM = 32


@pytest.fixture
def vector_dsn(services: LocalServices, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A vector database of this test's own, which the index stage's settings point at."""
    dsn = new_database(services, f"fecapass_hnsw_{uuid.uuid4().hex[:8]}")
    apply_migrations(dsn, "vector")
    monkeypatch.setenv("FECAPASS_VECTOR_DB_DSN", dsn)
    return dsn


def hnsw_indexes(dsn: str) -> dict[str, bool]:
    """Every HNSW index on face_embeddings, and whether it is valid (usable by searches)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT i.indexname, x.indisvalid FROM pg_indexes i"
            " JOIN pg_class c ON c.relname = i.indexname JOIN pg_index x ON x.indexrelid = c.oid"
            " WHERE i.tablename = 'face_embeddings' AND i.indexdef ILIKE '%USING hnsw%'"
        ).fetchall()
    return {str(name): bool(valid) for name, valid in rows}


def enroll_embeddings(pack: str, count: int = 3) -> None:
    """Embeddings written as the index stage writes them, through the handler its worker builds from settings."""
    rng = np.random.default_rng(1)
    with index_handler() as handler:
        for face_id in range(1, count + 1):
            vector = rng.normal(size=DIM).astype(np.float32)
            handler.vectors.add_embedding(face_id, pack, vector / np.linalg.norm(vector))


@pytest.mark.parametrize(
    ("search_index", "hnsw_index", "built"),
    [("binary", None, False), ("hnsw", None, True), ("binary", "true", True), ("hnsw", "false", False)],
)
def test_the_hnsw_index_is_built_only_where_the_settings_ask(
    vector_dsn: str, monkeypatch: pytest.MonkeyPatch, search_index: str, hnsw_index: str | None, built: bool
) -> None:
    monkeypatch.setenv("FECAPASS_SEARCH_INDEX", search_index)
    if hnsw_index is not None:
        monkeypatch.setenv("FECAPASS_HNSW_INDEX", hnsw_index)
    enroll_embeddings("mode-pack")
    assert hnsw_indexes(vector_dsn) == ({index_name("mode-pack"): True} if built else {})
    with psycopg.connect(vector_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM face_embeddings").fetchone() == (3,)


def test_build_index_and_drop_index_switch_a_binary_gallery(vector_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FECAPASS_SEARCH_INDEX", "binary")
    enroll_embeddings("switch-pack", count=20)
    assert hnsw_indexes(vector_dsn) == {}
    cli.main(["models", "build-index", "--pack", "switch-pack"])
    assert hnsw_indexes(vector_dsn) == {index_name("switch-pack"): True}
    with psycopg.connect(vector_dsn) as conn:  # built with the settings' graph (m 32, ef_construction 128)
        definition = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index_name("switch-pack"),)
        ).fetchone()
    assert definition is not None and "m='32'" in definition[0] and "halfvec" in definition[0]
    cli.main(["models", "drop-index"])  # the active pack: the first registered
    assert hnsw_indexes(vector_dsn) == {}


def test_build_index_refuses_a_pack_without_embeddings(vector_dsn: str) -> None:
    with pytest.raises(SystemExit) as refused:
        cli.main(["models", "build-index", "--pack", "nowhere"])
    assert "no embeddings" in str(refused.value)
    assert hnsw_indexes(vector_dsn) == {}
