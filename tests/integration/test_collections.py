"""Collections and external ids against the real servers. The data layer: people and faces stay in their collection,
external ids are unique per collection, listings filter exactly, keys carry their collections. The index stage (its
handler, with the binary index and with pgvector's HNSW index): a search in one collection never returns another's
person and keeps full recall in a collection holding 1 % of the gallery, verify refuses a person of another
collection, two enrolls racing for one external id, and an erased collection leaves nothing in PostgreSQL, the
index processes' codes or the bucket."""

from __future__ import annotations

import uuid

import numpy as np
import psycopg
import pytest
import redis

from common.apikeys import hash_key
from common.db.erasure import Erasure
from common.db.job_traces import queue_job_owner
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
from common.db.vector_repository import VectorRepository
from common.errors import JobFailed
from common.objects import ObjectStore, original_key
from common.objects import crop_key as crop_key_of
from indexer.binary_index import BinaryIndex
from indexer.gallery_feed import GalleryFeed
from indexer.stage import IndexHandler
from schemas.jobs import ErrorCode, job_key, user_jobs_key
from schemas.results import EnrollResult, StoredResult, StoredSearchResult, VerifyResult
from schemas.streams import AlignedFace, EmbeddedMessage, JobKind, encode_embeddings
from tests.conftest import unit

PACK, DIM = "coll8", 8


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
    found, taken = main.enroll_target(ann.id, "photo-1")
    assert found is not None and (found.id, found.collection_id, taken) == (ann.id, a, True)
    bob = main.create_user(email(), "Bob", b)
    assert main.enroll_target(bob.id, "photo-1") == (bob, False)  # taken in a, not in bob's b
    assert main.enroll_target(ann.id, None) == (main.get_user(ann.id), False)
    assert main.enroll_target(ann.id, "photo-2") == (main.get_user(ann.id), False)
    assert main.enroll_target(10**12, "photo-1") == (None, False)
    main.add_face(new_face(ann.id, a, "photo-3"))  # not served yet: its external id is not taken
    assert main.enroll_target(ann.id, "photo-3") == (main.get_user(ann.id), False)
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


# -- the index stage ---------------------------------------------------------------------------------------

SEARCH_DIM = 64


def near(vector: np.ndarray, distance: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at about this distance from ``vector``: similarity ~ 1 / sqrt(1 + distance^2)."""
    return unit(vector + distance * unit(rng.normal(size=vector.shape[0])))


def message(
    pack: str,
    kind: JobKind,
    embedding: np.ndarray,
    collection_id: int,
    *,
    user_id: int | None = None,
    external_id: str | None = None,
    limit: int = 5,
) -> EmbeddedMessage:
    job_id = uuid.uuid4().hex
    face = AlignedFace(box=(10, 20, 110, 140), keypoints=[(0, 0)] * 5, score=0.97, crop_key=crop_key_of(job_id, 0))
    return EmbeddedMessage(
        job_id=job_id,
        kind=kind,
        image_key=original_key(job_id),
        user_id=user_id,
        collection_id=collection_id,
        external_id=external_id,
        threshold=0.5,
        limit=limit,
        pack=pack,
        crop_size=112,
        faces=[face],
        faces_seen=1,
        embeddings=encode_embeddings(embedding.reshape(1, -1)),
        dim=int(embedding.shape[0]),
    )


def handled(handler: IndexHandler, entry: EmbeddedMessage) -> StoredResult:
    outcome = handler.handle(entry)
    assert outcome.result is not None
    return outcome.result.stored


def enroll(handler: IndexHandler, pack: str, embedding: np.ndarray, collection_id: int, **user: str) -> EnrollResult:
    person = handler.main.create_user(email(), "Person", collection_id, user.get("external_id"))
    result = handled(handler, message(pack, JobKind.ENROLL, embedding, collection_id, user_id=person.id))
    assert isinstance(result, EnrollResult)
    return result


def handlers(
    repositories: tuple[MainRepository, VectorRepository], store: ObjectStore, feed: GalleryFeed, candidates: int
) -> dict[str, IndexHandler]:
    main, vectors = repositories
    return {
        "binary": IndexHandler(
            main, vectors, store, presign=str, binary=BinaryIndex(vectors, feed, candidates=candidates)
        ),
        "hnsw": IndexHandler(main, vectors, store, presign=str, feed=feed),
    }


def matched_users(result: StoredResult) -> list[int]:
    assert isinstance(result, StoredSearchResult)
    return [match.user_id for match in result.faces[0].matches]


def test_a_search_in_a_collection_never_returns_another_collections_person(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, feed: GalleryFeed, pack: str
) -> None:
    main, _ = repositories
    a, b = main.create_collection(name()).id, main.create_collection(name()).id
    twin = unit(np.random.default_rng(1).normal(size=SEARCH_DIM))
    by_mode = handlers(repositories, object_store, feed, candidates=20)
    in_a = enroll(by_mode["hnsw"], pack, twin, a, external_id="A-1")
    in_b = enroll(by_mode["hnsw"], pack, twin, b)  # the very same face vector, at the other site
    rng = np.random.default_rng(2)
    for _ in range(4):
        enroll(by_mode["hnsw"], pack, unit(rng.normal(size=SEARCH_DIM)), b)
    for mode, handler in by_mode.items():
        found_a = handled(handler, message(pack, JobKind.SEARCH, twin, a))
        assert matched_users(found_a) == [in_a.user_id], mode
        assert isinstance(found_a, StoredSearchResult) and found_a.gallery_size == 1, mode  # a's gallery: one face
        assert found_a.faces[0].matches[0].external_id == "A-1"
        found_b = handled(handler, message(pack, JobKind.SEARCH, twin, b))
        assert matched_users(found_b) == [in_b.user_id], mode
        assert isinstance(found_b, StoredSearchResult) and found_b.gallery_size == 5, mode
        assert found_b.faces[0].matches[0].external_id is None
        empty = main.create_collection(name()).id
        assert matched_users(handled(handler, message(pack, JobKind.SEARCH, twin, empty))) == [], mode


def test_a_collection_holding_one_percent_of_the_gallery_keeps_full_recall(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, feed: GalleryFeed, pack: str
) -> None:
    """300 faces of a big collection lie nearer the query than the small collection's person: a search that
    scanned the whole gallery and then filtered would find the 20 candidates (binary) or the ef_search nearest
    (HNSW) all in the big collection, and the person of the small one never."""
    main, _ = repositories
    big, small = main.create_collection(name()).id, main.create_collection(name()).id
    rng = np.random.default_rng(3)
    query = unit(rng.normal(size=SEARCH_DIM))
    by_mode = handlers(repositories, object_store, feed, candidates=20)
    enrolling = by_mode["hnsw"]
    for _ in range(300):
        enroll(enrolling, pack, near(query, 0.3, rng), big)  # similarity ~0.96
    target = enroll(enrolling, pack, near(query, 0.8, rng), small)  # ~0.78: the small collection's person
    others = [enroll(enrolling, pack, unit(rng.normal(size=SEARCH_DIM)), small) for _ in range(2)]
    for mode, handler in by_mode.items():
        result = handled(handler, message(pack, JobKind.SEARCH, query, small))
        assert matched_users(result) == [target.user_id], mode  # the others are below the threshold
        assert isinstance(result, StoredSearchResult) and result.gallery_size == 3, mode
        # Every person of the small collection is reachable when the threshold lets them through.
        lenient = message(pack, JobKind.SEARCH, query, small)
        lenient = lenient.model_copy(update={"threshold": -1.0})
        assert set(matched_users(handled(handler, lenient))) == {target.user_id, *(o.user_id for o in others)}, mode
    binary = by_mode["binary"].binary
    assert binary is not None and binary.loaded_size(pack, small) == 3 and binary.loaded_size(pack, big) == 300


def test_verify_refuses_a_person_of_another_collection(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, feed: GalleryFeed, pack: str
) -> None:
    main, vectors = repositories
    a, b = main.create_collection(name()).id, main.create_collection(name()).id
    face = unit(np.random.default_rng(4).normal(size=SEARCH_DIM))
    handler = IndexHandler(main, vectors, object_store, presign=str, feed=feed)
    ann = enroll(handler, pack, face, a)
    same = handled(handler, message(pack, JobKind.VERIFY, face, a, user_id=ann.user_id))
    assert isinstance(same, VerifyResult) and same.match
    with pytest.raises(JobFailed) as refused:
        handler.handle(message(pack, JobKind.VERIFY, face, b, user_id=ann.user_id))
    assert refused.value.code == ErrorCode.USER_NOT_FOUND
    # Nor can an enroll entry of collection b add a face to a's person.
    with pytest.raises(JobFailed) as enroll_refused:
        handler.handle(message(pack, JobKind.ENROLL, face, b, user_id=ann.user_id))
    assert enroll_refused.value.code == ErrorCode.USER_NOT_FOUND
    assert main.count_faces(ann.user_id) == 1


def test_two_enrolls_racing_for_one_face_external_id(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, feed: GalleryFeed, pack: str
) -> None:
    """Both passed the API's check (no served face had the id yet); the index stage lets one have it."""
    main, vectors = repositories
    a, b = main.create_collection(name()).id, main.create_collection(name()).id
    handler = IndexHandler(main, vectors, object_store, presign=str, feed=feed)
    rng = np.random.default_rng(5)
    ann = main.create_user(email(), "Ann", a)
    first = message(pack, JobKind.ENROLL, unit(rng.normal(size=SEARCH_DIM)), a, user_id=ann.id, external_id="p-1")
    second = message(pack, JobKind.ENROLL, unit(rng.normal(size=SEARCH_DIM)), a, user_id=ann.id, external_id="p-1")
    for entry in (first, second):
        object_store.put(entry.image_key, b"photo", "image/jpeg")
        object_store.put(entry.faces[0].crop_key, b"crop", "image/png")
    won = handled(handler, first)
    assert isinstance(won, EnrollResult)
    with pytest.raises(JobFailed) as lost:
        handler.handle(second)
    assert lost.value.code == ErrorCode.FACE_EXTERNAL_ID_TAKEN
    assert [(face.id, face.external_id) for face in main.list_faces(ann.id)] == [(won.face_id, "p-1")]
    with main.pool.connection() as conn:  # no half-made face row of the loser
        assert conn.execute("SELECT count(*) FROM faces WHERE job_id = %s", (second.job_id,)).fetchone() == (0,)
    assert object_store.keys(second.image_key) == [] and object_store.keys(second.faces[0].crop_key) == []
    assert object_store.keys(first.image_key) == [first.image_key]  # the enrolled face keeps its photo
    # The id is taken in a only: b's person may have it; a redelivery of the winner changes nothing.
    bob = main.create_user(email(), "Bob", b)
    at_b = message(pack, JobKind.ENROLL, unit(rng.normal(size=SEARCH_DIM)), b, user_id=bob.id, external_id="p-1")
    assert isinstance(handled(handler, at_b), EnrollResult)
    again = handled(handler, first)
    assert isinstance(again, EnrollResult) and again.face_id == won.face_id


def test_erasing_a_collection_leaves_nothing_of_it(
    repositories: tuple[MainRepository, VectorRepository],
    object_store: ObjectStore,
    redis_client: redis.Redis,
    feed: GalleryFeed,
    pack: str,
) -> None:
    main, vectors = repositories
    gone, kept = main.create_collection(name()).id, main.create_collection(name()).id
    binary = BinaryIndex(vectors, feed, candidates=20)
    handler = IndexHandler(main, vectors, object_store, presign=str, binary=binary)
    rng = np.random.default_rng(6)
    enrolled: list[tuple[EmbeddedMessage, int]] = []
    for collection_id in (gone, gone, gone, kept):
        person = main.create_user(email(), "Person", collection_id)
        for _ in range(2):
            entry = message(pack, JobKind.ENROLL, unit(rng.normal(size=SEARCH_DIM)), collection_id, user_id=person.id)
            object_store.put(entry.image_key, b"photo", "image/jpeg")
            object_store.put(entry.faces[0].crop_key, b"crop", "image/png")
            # As the API leaves a job: its hash, and its id in the person's set.
            redis_client.hset(job_key(entry.job_id), mapping={"kind": "enroll", "state": "done", "created_at": "1"})
            with redis_client.pipeline(transaction=True) as pipe:
                queue_job_owner(pipe, person.id, entry.job_id, 600)
                pipe.execute()
            handled(handler, entry)
            enrolled.append((entry, collection_id))
    handled(handler, message(pack, JobKind.SEARCH, enrolled[0][0].embedding_matrix()[0], gone))
    assert binary.loaded_size(pack, gone) == 6 and binary.loaded_size(pack, kept) == 2
    people = main.collection_user_ids(gone)
    assert len(people) == 3

    erasure = Erasure(main, vectors, object_store, redis_client, 600, feed_stream=feed.stream)
    assert erasure.erase_collection(gone) == 3
    # PostgreSQL, both databases.
    assert main.get_collection(gone) is None
    with main.pool.connection() as conn:
        for table in ("users", "faces"):
            count = conn.execute(f"SELECT count(*) FROM {table} WHERE collection_id = %s", (gone,)).fetchone()
            assert count == (0,), table
    assert vectors.count_in_collection(gone) == 0 and vectors.count_in_collection(kept) == 2
    # The bucket, Redis (job hashes and the people's job sets), the index process's codes.
    for entry, collection_id in enrolled:
        held = object_store.keys(entry.image_key) + object_store.keys(entry.faces[0].crop_key)
        assert len(held) == (0 if collection_id == gone else 2), entry.job_id
        assert redis_client.exists(job_key(entry.job_id)) == (0 if collection_id == gone else 1)
    assert all(not redis_client.exists(user_jobs_key(user_id)) for user_id in people)
    binary.refresh(pack, SEARCH_DIM)
    assert binary.loaded_size(pack, gone) == 0 and binary.loaded_size(pack, kept) == 2
    assert erasure.erase_collection(gone) == 0  # again: nothing left to do


def test_the_default_collection_is_emptied_not_deleted(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, redis_client: redis.Redis
) -> None:
    main, vectors = repositories
    person = main.create_user(email(), "Default Person")
    erasure = Erasure(
        main, vectors, object_store, redis_client, 600, feed_stream=f"fecapass:gallery:test:{uuid.uuid4().hex}"
    )
    assert erasure.erase_collection(DEFAULT_COLLECTION_ID, keep_row=True) >= 1
    assert main.get_user(person.id) is None and main.collection_user_ids(DEFAULT_COLLECTION_ID) == []
    assert main.get_collection(DEFAULT_COLLECTION_ID) is not None
