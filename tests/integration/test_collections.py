"""Collections and external ids in the data layer, against the real PostgreSQL: people and faces stay in their
collection, external ids are unique per collection, listings filter exactly, keys carry their collections."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from common import clients
from common.apikeys import hash_key
from common.db.main_repository import (
    DEFAULT_COLLECTION_ID,
    CollectionNotEmpty,
    DuplicateCollection,
    DuplicateEmail,
    DuplicateExternalId,
    DuplicateFaceExternalId,
    MainRepository,
    NewFace,
    UnknownCollection,
    UnknownUser,
)
from common.db.migrate import migrate_all
from common.db.vector_repository import VectorRepository
from common.settings import DatabaseSettings
from operations.services import LocalServices

PACK, DIM = "coll8", 8


@pytest.fixture(scope="module")
def repositories(services: LocalServices) -> Iterator[tuple[MainRepository, VectorRepository]]:
    with psycopg.connect(services.dsn("postgres"), autocommit=True) as conn:
        for database in ("fecapass_coll_main", "fecapass_coll_vector"):
            conn.execute(f"DROP DATABASE IF EXISTS {database}")
            conn.execute(f"CREATE DATABASE {database}")
    migrate_all(services.dsn("fecapass_coll_main"), services.dsn("fecapass_coll_vector"))
    settings = DatabaseSettings(
        main_db_dsn=services.dsn("fecapass_coll_main"), vector_db_dsn=services.dsn("fecapass_coll_vector")
    )
    with clients.main_db_pool(settings) as main_pool, clients.vector_db_pool(settings) as vector_pool:
        yield MainRepository(main_pool), VectorRepository(vector_pool)


def name() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def email() -> str:
    return f"{uuid.uuid4().hex[:10]}@example.com"


def new_face(user_id: int, collection_id: int, external_id: str | None = None) -> NewFace:
    job_id = uuid.uuid4().hex
    return NewFace(
        user_id, job_id, f"originals/{job_id}", f"crops/{job_id}/0.png", (1, 2, 3, 4), 0.9, 1, PACK,
        collection_id=collection_id, external_id=external_id,
    )  # fmt: skip


def test_collections_are_created_once_by_name(repositories: tuple[MainRepository, VectorRepository]) -> None:
    main, _ = repositories
    created = main.create_collection(name())
    with pytest.raises(DuplicateCollection):
        main.create_collection(created.name)
    assert main.collection_named(created.name) == created == main.get_collection(created.id)
    assert main.collection_named("default") is not None and main.collection_named("default").id == 1  # type: ignore[union-attr]
    assert [row.id for row in main.list_collections([created.id])] == [created.id]
    with pytest.raises(psycopg.errors.CheckViolation):
        main.create_collection("Not A Name")


def test_email_and_external_id_are_unique_per_collection(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    main, _ = repositories
    a, b = main.create_collection(name()).id, main.create_collection(name()).id
    address, external = email(), f"hr-{uuid.uuid4().hex[:6]}"
    ann = main.create_user(address, "Ann", a, external)
    assert (ann.collection_id, ann.external_id) == (a, external)
    with pytest.raises(DuplicateEmail):
        main.create_user(address.upper(), "Ann again", a)
    with pytest.raises(DuplicateExternalId):
        main.create_user(email(), "Other", a, external)
    # The same address and id name another person at another site.
    other = main.create_user(address, "Ann at B", b, external)
    assert other.collection_id == b
    with pytest.raises(UnknownCollection):
        main.create_user(email(), "Nowhere", 10**9)
    bob = main.create_user(email(), "Bob", a)
    with pytest.raises(DuplicateExternalId):
        main.update_user(bob.id, email=None, full_name=None, is_active=None, external_id=external)
    with pytest.raises(DuplicateEmail):
        main.update_user(bob.id, email=address, full_name=None, is_active=None)
    updated = main.update_user(bob.id, email=None, full_name=None, is_active=None, external_id="bob-1")
    assert updated is not None and updated.external_id == "bob-1" and updated.full_name == "Bob"
    kept = main.update_user(bob.id, email=None, full_name="Robert", is_active=None)
    assert kept is not None and kept.external_id == "bob-1"
    cleared = main.update_user(bob.id, email=None, full_name=None, is_active=None, clear_external_id=True)
    assert cleared is not None and cleared.external_id is None


def test_listing_filters_by_collection_email_and_external_id(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    main, _ = repositories
    a, b = main.create_collection(name()).id, main.create_collection(name()).id
    address = email()
    in_a = [main.create_user(address, "Ann", a, "x-1"), main.create_user(email(), "Ann two", a, "x-2")]
    in_b = main.create_user(address, "Ann", b, "x-1")
    assert [u.id for u in main.list_users(0, 100, collection_id=a)] == [u.id for u in in_a]
    assert [u.id for u in main.list_users(0, 100, collection_id=b)] == [in_b.id]
    assert [u.id for u in main.list_users(0, 100, collection_id=a, email=address.upper())] == [in_a[0].id]
    assert [u.id for u in main.list_users(0, 100, collection_id=b, external_id="x-1")] == [in_b.id]
    assert main.list_users(0, 100, collection_id=a, external_id="x-") == []  # exact, not a prefix
    assert main.list_users(0, 100, collection_id=a, email="%@example.com") == []
    assert {u.id for u in main.list_users(0, 100, email=address)} == {in_a[0].id, in_b.id}


def test_faces_stay_in_their_users_collection(repositories: tuple[MainRepository, VectorRepository]) -> None:
    main, vectors = repositories
    a, b = main.create_collection(name()).id, main.create_collection(name()).id
    ann = main.create_user(email(), "Ann", a)
    with pytest.raises(UnknownUser):  # a job of collection b cannot enroll a person of a
        main.add_face(new_face(ann.id, b))
    face = new_face(ann.id, a, "photo-1")
    face_id = main.add_face(face)
    vectors.add_embedding(face_id, PACK, np.ones(DIM, dtype=np.float32) / np.sqrt(DIM), a)
    main.serve_face(face_id, ann.id, face.job_id)
    row = main.get_face(face_id)
    assert row is not None and (row.collection_id, row.external_id) == (a, "photo-1")
    assert main.face_external_id_taken(a, "photo-1") and not main.face_external_id_taken(b, "photo-1")
    with pytest.raises(DuplicateFaceExternalId):
        main.add_face(new_face(ann.id, a, "photo-1"))
    assert main.face_owners([face_id], a)[face_id].user_id == ann.id
    assert main.face_owners([face_id], b) == {}
    assert vectors.count(PACK, a) == 1 and vectors.count(PACK, b) == 0
    assert [n.face_id for n in vectors.nearest(PACK, np.ones(DIM, dtype=np.float32), 5, a)] == [face_id]
    assert vectors.nearest(PACK, np.ones(DIM, dtype=np.float32), 5, b) == []
    codes = vectors.binary_codes_of(PACK, DIM, [face_id])
    assert codes.collections.tolist() == [a]


def test_keys_carry_their_collections(repositories: tuple[MainRepository, VectorRepository]) -> None:
    main, _ = repositories
    a = main.create_collection(name()).id
    limited = main.create_api_key("limited", "read", [a])
    everything = main.create_api_key("all", "write")
    assert limited.row.collection_ids == [a] and everything.row.collection_ids is None
    grant = main.api_key_grant(hash_key(limited.key))
    assert grant is not None and grant.scope == "read" and grant.sees(a) and not grant.sees(DEFAULT_COLLECTION_ID)
    open_grant = main.api_key_grant(hash_key(everything.key))
    assert open_grant is not None and open_grant.collection_ids is None and open_grant.sees(a)
    # A collection deleted leaves its keys limited to nothing, never to everything.
    assert main.delete_collection(a)
    after = main.api_key_grant(hash_key(limited.key))
    assert after is not None and after.collection_ids == frozenset() and not after.sees(DEFAULT_COLLECTION_ID)


def test_a_collection_with_people_or_the_default_one_is_not_deleted(
    repositories: tuple[MainRepository, VectorRepository],
) -> None:
    main, _ = repositories
    a = main.create_collection(name()).id
    main.create_user(email(), "Ann", a)
    with pytest.raises(CollectionNotEmpty):
        main.delete_collection(a)
    assert main.get_collection(a) is not None
    assert not main.delete_collection(DEFAULT_COLLECTION_ID)
    assert main.get_collection(DEFAULT_COLLECTION_ID) is not None
