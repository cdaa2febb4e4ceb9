"""SQL against the real PostgreSQL + pgvector: migrations, idempotent writes, per-pack k-NN."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

from common.apikeys import KEY_PREFIX, Scope, hash_key
from common.db.main_repository import DuplicateEmail, MainRepository, NewFace, UnknownUser
from common.db.migrate import apply_migrations, migrate_all, migration_files
from common.db.vector_repository import (
    HnswParameters,
    PackMismatch,
    VectorRepository,
    index_name,
    nearest_statement,
)
from common.settings import DatabaseSettings
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from tests.conftest import new_database, unit

DEPLOYMENT = Path(__file__).resolve().parents[2] / "DEPLOYMENT.md"


def new_face(user_id: int, job_id: str | None = None) -> NewFace:
    job_id = job_id or uuid.uuid4().hex
    return NewFace(user_id, job_id, f"originals/{job_id}", f"crops/{job_id}/0.png", (1, 2, 3, 4), 0.9, 1, "test")


def test_migrations_are_idempotent(services: LocalServices) -> None:
    assert migrate_all(services.dsn(MAIN_DB), services.dsn(VECTOR_DB)) == []
    assert apply_migrations(services.dsn(MAIN_DB), "main") == []
    with psycopg.connect(services.dsn(VECTOR_DB)) as conn:
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'face_embeddings'::regclass AND attname = 'embedding'"
        ).fetchone()
    assert storage == ("p",)  # PLAIN: vectors stay out of TOAST


def test_one_server_one_database_works_too(services: LocalServices) -> None:
    dsn = new_database(services, "fecapass_single")
    assert len(migrate_all(dsn, dsn)) == len(migration_files("main")) + len(migration_files("vector"))
    assert migrate_all(dsn, dsn) == []


def test_user_email_is_unique_case_insensitively(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    main, _ = repositories
    email = f"{uuid.uuid4().hex}@example.com"
    user = main.create_user(email, "Ann")
    assert main.get_user(user.id) == user
    with pytest.raises(DuplicateEmail):
        main.create_user(email.upper(), "Ann again")


def test_add_face_is_idempotent_per_job(repositories: tuple[MainRepository, VectorRepository]) -> None:
    main, vectors = repositories
    user = main.create_user(f"{uuid.uuid4().hex}@example.com", "")
    face = new_face(user.id)
    first = main.add_face(face)
    assert main.add_face(face) == first  # redelivered message: same row
    assert main.count_faces(user.id) == 0 and main.get_face(first) is None  # not served before its embedding
    main.serve_face(first, user.id, face.job_id)
    assert main.count_faces(user.id) == 1
    embedding = unit(np.random.default_rng(3).standard_normal(8))
    vectors.add_embedding(first, "idem8", embedding)
    vectors.add_embedding(first, "idem8", embedding)
    assert vectors.count("idem8") == 1


def test_add_face_for_unknown_user_fails(repositories: tuple[MainRepository, VectorRepository]) -> None:
    main, _ = repositories
    with pytest.raises(UnknownUser):
        main.add_face(new_face(10**12))


def test_nearest_is_cosine_and_uses_the_pack_index(
    repositories: tuple[MainRepository, VectorRepository], services: LocalServices
) -> None:
    main, vectors = repositories
    rng = np.random.default_rng(7)
    stored, face_ids = stored_faces(main, vectors, "knn16", 20, rng)
    query = unit(stored[5] + 0.05 * rng.standard_normal(16))
    found = vectors.nearest("knn16", query, 3)
    assert found[0].face_id == face_ids[5]
    assert found[0].similarity == pytest.approx(float(query @ stored[5]), abs=1e-5)
    assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)
    assert "face_embeddings_hnsw_knn16" in query_plan(vectors, "knn16", query)
    assert "halfvec" in index_definition(vectors, "knn16")  # new packs: half the index size, same recall


def stored_faces(
    main: MainRepository, vectors: VectorRepository, pack: str, count: int, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[int]]:
    """``count`` random unit vectors of the pack's dimension (from its name), each a face of one new user."""
    dim = int("".join(c for c in pack if c.isdigit()))
    user = main.create_user(f"{uuid.uuid4().hex}@example.com", "")
    stored = [unit(rng.standard_normal(dim)) for _ in range(count)]
    face_ids = [main.add_face(new_face(user.id)) for _ in stored]
    for face_id, vector in zip(face_ids, stored, strict=True):
        vectors.add_embedding(face_id, pack, vector)
    return stored, face_ids


def query_plan(vectors: VectorRepository, pack: str, query: np.ndarray) -> str:
    """The plan of the repository's own k-NN statement (the index is used only if it repeats its expression)."""
    statement = nearest_statement(pack, vectors.ensure_pack(pack, len(query)))
    with vectors.pool.connection() as conn:  # pgvector types registered
        conn.execute("SET enable_seqscan = off")
        rows = conn.execute(sql.SQL("EXPLAIN ") + statement, {"q": query, "limit": 3}).fetchall()
        conn.execute("RESET enable_seqscan")
    return "\n".join(row[0] for row in rows)


def index_definition(vectors: VectorRepository, pack: str) -> str:
    with psycopg.connect(vectors.pool.conninfo) as conn:
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", (index_name(pack),)).fetchone()
    assert row is not None
    return str(row[0])


def test_index_is_built_and_searched_with_the_configured_hnsw_parameters(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    main, vectors = repositories
    tuned = VectorRepository(vectors.pool, HnswParameters(m=8, ef_construction=40, ef_search=77))
    stored, face_ids = stored_faces(main, tuned, "tuned8", 10, np.random.default_rng(5))
    definition = index_definition(tuned, "tuned8")
    assert "m='8'" in definition and "ef_construction='40'" in definition
    assert tuned.nearest("tuned8", stored[2], 1)[0].face_id == face_ids[2]


def test_a_pack_registered_before_halfvec_keeps_its_vector_index(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    main, vectors = repositories
    with vectors.pool.connection() as conn:  # as migration 0003 leaves a pack registered before it
        conn.execute(
            "INSERT INTO model_packs (name, dim, index_name, index_storage) VALUES ('legacy8', 8, %s, 'vector')",
            (index_name("legacy8"),),
        )
    stored, face_ids = stored_faces(main, vectors, "legacy8", 10, np.random.default_rng(11))
    assert vectors.nearest("legacy8", stored[3], 1)[0].face_id == face_ids[3]
    assert "vector_cosine_ops" in index_definition(vectors, "legacy8")
    assert index_name("legacy8") in query_plan(vectors, "legacy8", stored[3])
    # DEPLOYMENT.md's steps to move such a pack to a halfvec index, as written there.
    steps = DEPLOYMENT.read_text().split("  -- in the vector database;", 1)[1].split("```", 1)[0]
    steps = steps.split("\n", 1)[1].replace("<dim>", "8").replace("<pack>", "legacy8")
    steps = steps.replace("<index>", index_name("legacy8"))
    with psycopg.connect(vectors.pool.conninfo, autocommit=True) as conn:
        create, rest = steps.split(";", 1)
        conn.execute(create)  # CONCURRENTLY: outside a transaction
        for statement in rest.split(";"):
            if statement.strip():
                conn.execute(statement)
    restarted = VectorRepository(vectors.pool)
    assert "halfvec_cosine_ops" in index_definition(restarted, "legacy8")
    assert index_name("legacy8") in query_plan(restarted, "legacy8", stored[3])
    assert restarted.nearest("legacy8", stored[3], 1)[0].face_id == face_ids[3]


def test_a_crowded_pack_does_not_hide_another_packs_faces(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    """The pack filter is each pack's partial index predicate, not a filter after the k-NN scan: a scan of one
    index over all packs would fill its ef_search candidates with the crowded pack's faces and filter them
    all away (what pgvector's iterative scans exist for)."""
    main, vectors = repositories
    rng = np.random.default_rng(13)
    query = unit(rng.standard_normal(8))
    user = main.create_user(f"{uuid.uuid4().hex}@example.com", "")
    crowd = [main.add_face(new_face(user.id)) for _ in range(400)]
    for face_id in crowd:  # all closer to the query than any face of the other pack
        vectors.add_embedding(face_id, "crowd8", unit(query + 0.05 * rng.standard_normal(8)))
    stored, face_ids = stored_faces(main, vectors, "quiet8", 30, rng)
    exact = sorted(zip(face_ids, stored, strict=True), key=lambda pair: -float(pair[1] @ query))[:10]
    assert [n.face_id for n in vectors.nearest("quiet8", query, 10)] == [face_id for face_id, _ in exact]
    assert index_name("quiet8") in query_plan(vectors, "quiet8", query)


def test_a_collection_search_walks_as_far_as_its_settings_say(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    """The search's settings go to PostgreSQL as one statement of several SET LOCALs: each must still reach the
    scan. 400 faces of one collection lie nearer the query than the 5 of another; the small collection's search
    finds its faces only by iterative scan, and only as far as hnsw.max_scan_tuples lets it walk."""
    main, vectors = repositories
    rng = np.random.default_rng(17)
    query = unit(rng.standard_normal(8))
    crowded, small = main.create_collection(uuid.uuid4().hex).id, main.create_collection(uuid.uuid4().hex).id
    user = main.create_user(f"{uuid.uuid4().hex}@example.com", "")
    for _ in range(400):
        vectors.add_embedding(
            main.add_face(new_face(user.id)), "walk8", unit(query + 0.05 * rng.standard_normal(8)), crowded
        )
    few = [main.add_face(new_face(user.id)) for _ in range(5)]
    for face_id in few:
        vectors.add_embedding(face_id, "walk8", unit(rng.standard_normal(8)), small)
    walking = VectorRepository(vectors.pool, HnswParameters(ef_search=40))
    assert sorted(n.face_id for n in walking.nearest("walk8", query, 5, small)) == sorted(few)
    # A walk cut short sees only the crowded collection's faces: none of the small one's.
    cut = VectorRepository(vectors.pool, HnswParameters(ef_search=40, max_scan_tuples=1))
    assert cut.nearest("walk8", query, 5, small) == []
    # The settings were the transaction's own: the session's stay pgvector's defaults.
    with vectors.pool.connection() as conn:
        shown = [conn.execute(f"SHOW hnsw.{name}").fetchone() for name in ("iterative_scan", "max_scan_tuples")]
    assert shown == [("off",), ("20000",)]


def test_packs_are_kept_apart_and_dimension_is_fixed(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    main, vectors = repositories
    user = main.create_user(f"{uuid.uuid4().hex}@example.com", "")
    face_id = main.add_face(new_face(user.id))
    vectors.add_embedding(face_id, "packa4", unit(np.ones(4)))
    vectors.add_embedding(face_id, "packb6", unit(np.ones(6)))
    assert [n.face_id for n in vectors.nearest("packa4", unit(np.ones(4)), 5)] == [face_id]
    fresh = VectorRepository(vectors.pool)  # no cached dims: the database refuses
    with pytest.raises(PackMismatch):
        fresh.add_embedding(face_id, "packa4", unit(np.ones(5)))
    with pytest.raises(ValueError, match="invalid model pack"):
        vectors.ensure_pack("bad name; drop table", 4)


def test_first_pack_is_active_until_another_is_activated(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    from operations.reindex import count_missing, missing_faces

    main, vectors = repositories
    # The first pack registered in this database becomes active: this test's own, or an earlier test's.
    vectors.ensure_pack("firstpack", 4)
    active = vectors.active_pack()
    assert active is not None and active != "nextpack"
    user = main.create_user(f"{uuid.uuid4().hex}@example.com", "")
    faces = [main.add_face(new_face(user.id)) for _ in range(3)]
    vectors.add_embedding(faces[0], "nextpack", unit(np.ones(8)))
    assert vectors.active_pack() == active  # registering another pack does not switch
    missing = {face.id for face in missing_faces(main, vectors, "nextpack")}
    assert set(faces[1:]) <= missing and faces[0] not in missing
    assert count_missing(main, vectors, "nextpack")[0] == len(missing)
    vectors.activate("nextpack")
    assert vectors.active_pack() == "nextpack"
    by_name = {pack.name: pack for pack in vectors.packs()}
    assert by_name["nextpack"].active and not by_name[active].active and by_name["nextpack"].dim == 8
    assert vectors.active() == ("nextpack", 8)
    with pytest.raises(LookupError):
        vectors.activate("never_seen")
    assert vectors.active_pack() == "nextpack"
    vectors.activate(active)  # back, for the other tests
    with psycopg.connect(vectors.pool.conninfo) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("UPDATE model_packs SET active = true")  # the database itself allows one active pack


def test_api_keys_are_stored_as_hashes_and_revoked_once(
    repositories: tuple[MainRepository, VectorRepository], module_databases: DatabaseSettings
) -> None:
    main, _ = repositories
    main_dsn = module_databases.main_db_dsn.get_secret_value()
    created = main.create_api_key("repo-test", "read")
    assert created.key.startswith(KEY_PREFIX) and created.row.prefix == created.key[:12]
    assert created.row.scope == "read" and created.row.revoked_at is None
    with psycopg.connect(main_dsn) as conn:
        stored = conn.execute("SELECT key_hash FROM api_keys WHERE id = %s", (created.row.id,)).fetchone()
    assert stored is not None and bytes(stored[0]) == hash_key(created.key) and created.key.encode() not in stored[0]
    assert main.api_key_scope(hash_key(created.key)) == "read"
    # The same method over one connection per call (tools and tests without a pool) sees the same rows.
    other = MainRepository.at(main_dsn).create_api_key("repo-test-2", Scope.WRITE)
    assert main.api_key_scope(hash_key(other.key)) == "write"
    with pytest.raises(ValueError):
        main.create_api_key("bad", "root")  # admin is a scope since the console; an unknown one is refused
    assert main.revoke_api_key(created.row.id) and not main.revoke_api_key(created.row.id)
    assert main.api_key_scope(hash_key(created.key)) is None
    assert [row.name for row in main.list_api_keys()][-2:] == ["repo-test", "repo-test-2"]
