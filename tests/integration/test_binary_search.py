"""The binary-code index on the real servers: codes loaded from PostgreSQL, kept current by the gallery feed (a
Redis stream), candidates ranked by PostgreSQL on the full vectors of live rows; and the gallery-aware threshold
that every search result reports, through the index stage."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import redis

from common import clients
from common.db.main_repository import MainRepository, NewFace
from common.db.vector_repository import VectorRepository
from common.errors import DependencyUnavailable
from common.objects import ObjectStore
from common.packs.catalog import default_threshold, gallery_threshold
from common.runner import StageRunner, ensure_group
from common.settings import DatabaseSettings, StreamSettings
from indexer.binary_index import BinaryIndex, binary_code
from indexer.gallery_feed import Change, GalleryFeed
from indexer.stage import IndexHandler
from schemas.jobs import job_key
from schemas.results import StoredSearchResult, VerifyResult, parse_stored_result
from schemas.streams import AlignedFace, EmbeddedMessage, JobKind, Stage, encode_embeddings
from schemas.text import decode_fields
from tests.conftest import unit

FAST = StreamSettings(read_count=8, block_ms=50, claim_idle_ms=100, max_deliveries=3)
DIM = 64
GALLERY = 60


def enroll(main: MainRepository, vectors: VectorRepository, pack: str, embedding: np.ndarray) -> int:
    """A user with one served face of ``pack`` (as the index stage leaves it), published by nobody."""
    user = main.create_user(f"binary.{uuid.uuid4().hex[:8]}@example.com", "Binary Person")
    assert user is not None
    job_id = uuid.uuid4().hex
    face_id = main.add_face(
        NewFace(user.id, job_id, f"originals/{job_id}", f"crops/{job_id}/0.png", (1, 2, 3, 4), 0.9, 1, pack)
    )
    vectors.add_embedding(face_id, pack, embedding)
    main.serve_face(face_id, user.id, job_id)
    return face_id


def gallery(
    main: MainRepository, vectors: VectorRepository, pack: str, size: int = GALLERY, seed: int = 3
) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    stored = {}
    for _ in range(size):
        embedding = unit(rng.normal(size=DIM))
        stored[enroll(main, vectors, pack, embedding)] = embedding
    return stored


def test_codes_are_pgvectors_binary_quantize_and_the_ranking_is_exact(
    repositories: tuple[MainRepository, VectorRepository], feed: GalleryFeed, pack: str
) -> None:
    main, vectors = repositories
    stored = gallery(main, vectors, pack)
    ids, codes = vectors.binary_codes_of(pack, DIM, sorted(stored))
    for face_id, code in zip(ids.tolist(), codes, strict=True):
        assert np.array_equal(code, binary_code(stored[face_id])[0])
    index = BinaryIndex(vectors, feed, candidates=GALLERY)  # every face a candidate: the answer must be exact
    query = unit(next(iter(stored.values())) + 0.3 * unit(np.random.default_rng(5).normal(size=DIM)))
    found = index.nearest(pack, query, 10)
    exact = sorted(stored, key=lambda face_id: -float(stored[face_id] @ query))[:10]
    assert [n.face_id for n in found] == exact
    for neighbour in found:
        assert neighbour.similarity == pytest.approx(float(stored[neighbour.face_id] @ query), abs=1e-5)
    assert index.loaded_size(pack) == GALLERY


def test_the_codes_load_outlasts_a_stage_pools_transaction_timeout(
    module_databases: DatabaseSettings, repositories: tuple[MainRepository, VectorRepository], pack: str
) -> None:
    """Loading millions of codes takes longer than a stage pool lets a transaction last: the load lifts the limit
    for its own transaction, and the next transaction of that connection has it again."""
    main, vectors = repositories
    stored = gallery(main, vectors, pack, size=6)
    settings = module_databases.model_copy(update={"db_stage_transaction_seconds": 0.5})
    with clients.vector_db_pool(settings, open_now=True, stage=True) as pool:
        loaded: list[int] = []
        for codes in VectorRepository(pool).binary_codes(pack, DIM, batch=2):
            time.sleep(0.3)  # a slow reader: the load lasts past the pool's transaction timeout
            loaded += codes.ids.tolist()
        assert sorted(loaded) == sorted(stored)
        with pool.connection() as conn:
            assert conn.execute("SHOW transaction_timeout").fetchone() == ("500ms",)


def test_an_erased_face_is_never_returned_even_while_its_code_is_in_memory(
    repositories: tuple[MainRepository, VectorRepository], feed: GalleryFeed, pack: str
) -> None:
    main, vectors = repositories
    stored = gallery(main, vectors, pack)
    index = BinaryIndex(vectors, feed, candidates=20)
    target, embedding = next(iter(stored.items()))
    assert index.nearest(pack, embedding, 5)[0].face_id == target
    # Erased by a process that publishes nothing (the API's erasure): the code stays in memory.
    assert vectors.delete_faces([target]) == 1
    found = index.nearest(pack, embedding, 5)
    assert target not in {n.face_id for n in found} and len(found) == 5
    # ... and is dropped once the ranking found its row gone.
    assert index.loaded_size(pack) == GALLERY - 1


def test_a_newly_enrolled_face_is_found_by_a_process_loaded_before(
    repositories: tuple[MainRepository, VectorRepository], feed: GalleryFeed, pack: str
) -> None:
    main, vectors = repositories
    gallery(main, vectors, pack, size=20)
    other_process = BinaryIndex(vectors, feed, candidates=10)
    newcomer = unit(np.random.default_rng(99).normal(size=DIM))
    assert other_process.nearest(pack, newcomer, 1)[0].similarity < 0.9  # loaded: no such face yet
    face_id = enroll(main, vectors, pack, newcomer)
    feed.publish(Change.ADD, pack, [face_id])
    feed.publish(Change.ADD, pack, [face_id])  # read twice (a redone enroll): still one code
    [found] = other_process.nearest(pack, newcomer, 1)
    assert found.face_id == face_id and found.similarity == pytest.approx(1.0, abs=1e-5)
    assert other_process.loaded_size(pack) == 21


def test_a_feed_with_entries_this_process_never_read_trimmed_away_reloads(
    repositories: tuple[MainRepository, VectorRepository], feed: GalleryFeed, pack: str, redis_client: redis.Redis
) -> None:
    main, vectors = repositories
    gallery(main, vectors, pack, size=10)
    index = BinaryIndex(vectors, feed, candidates=10)
    feed.publish(Change.ADD, pack, [10**12])  # some face of another moment; the stream exists from here
    index.nearest(pack, unit(np.ones(DIM)), 1)
    newcomer = unit(np.random.default_rng(42).normal(size=DIM))
    face_id = enroll(main, vectors, pack, newcomer)
    feed.publish(Change.ADD, pack, [face_id])
    feed.publish(Change.ADD, pack, [10**12 + 1])
    redis_client.xtrim(feed.stream, maxlen=1, approximate=False)  # the entry naming the newcomer is gone
    assert feed.read(index._positions[pack]) is None
    assert index.nearest(pack, newcomer, 1)[0].face_id == face_id  # found anyway: the gap made it reload
    # A stream lost altogether (Redis restarted without its data) is a gap too.
    redis_client.delete(feed.stream)
    feed.publish(Change.ADD, pack, [10**12 + 2])
    assert feed.read(index._positions[pack]) is None


def search_message(
    pack: str, query: np.ndarray, kind: JobKind, threshold: float | None, user_id: int | None = None
) -> EmbeddedMessage:
    job_id = uuid.uuid4().hex
    face = AlignedFace(box=(10, 20, 110, 140), keypoints=[(0, 0)] * 5, score=0.97, source=0, crop_key="c/0")
    return EmbeddedMessage(
        job_id=job_id,
        kind=kind,
        image_key=f"originals/{job_id}",
        threshold=threshold,
        limit=5,
        pack=pack,
        crop_size=112,
        faces=[face],
        faces_seen=1,
        embeddings=encode_embeddings(query.reshape(1, -1)),
        dim=DIM,
        user_id=user_id,
    )


def run_job(redis_client: redis.Redis, handler: IndexHandler, message: EmbeddedMessage) -> object:
    redis_client.hset(job_key(message.job_id), mapping={"kind": message.kind.value, "state": "embedding"})
    ensure_group(redis_client, Stage.INDEX)
    redis_client.xadd(Stage.INDEX.stream, message.to_fields())
    StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="binary").run_once()
    raw = decode_fields(redis_client.hgetall(job_key(message.job_id)))
    assert raw["state"] == "done", raw
    return parse_stored_result(message.kind, raw["result"])


def job(
    pack: str, query: np.ndarray, kind: JobKind = JobKind.SEARCH, threshold: float | None = None
) -> EmbeddedMessage:
    return search_message(pack, query, kind, threshold)


def test_searches_report_the_threshold_the_gallery_chose_and_verify_keeps_its_own(
    repositories: tuple[MainRepository, VectorRepository],
    feed: GalleryFeed,
    pack: str,
    redis_client: redis.Redis,
    object_store: ObjectStore,
) -> None:
    main, vectors = repositories
    stored = gallery(main, vectors, pack)
    query = next(iter(stored.values()))
    binary = BinaryIndex(vectors, feed, candidates=20)
    for handler in (
        IndexHandler(main, vectors, object_store, presign=str, binary=binary),
        IndexHandler(main, vectors, object_store, presign=str),  # the HNSW path counts the gallery itself
    ):
        result = run_job(redis_client, handler, job(pack, query))
        assert isinstance(result, StoredSearchResult)
        assert (result.threshold_source, result.gallery_size) == ("gallery", GALLERY)
        assert result.threshold == gallery_threshold(pack, GALLERY, 0.1) != default_threshold(pack)
        assert result.faces[0].matches[0].similarity == pytest.approx(1.0, abs=1e-4)
        requested = run_job(redis_client, handler, job(pack, query, threshold=0.95))
        assert isinstance(requested, StoredSearchResult)
        assert (requested.threshold, requested.threshold_source, requested.gallery_size) == (0.95, "request", GALLERY)
    setting = IndexHandler(main, vectors, object_store, 0.6, presign=str, binary=binary)
    chosen = run_job(redis_client, setting, job(pack, query))
    assert isinstance(chosen, StoredSearchResult) and (chosen.threshold, chosen.threshold_source) == (0.6, "setting")
    # A stricter rule (fewer false matches allowed) raises the threshold for the same gallery.
    strict = IndexHandler(main, vectors, object_store, presign=str, binary=binary, false_matches_per_search=0.001)
    stricter = run_job(redis_client, strict, job(pack, query))
    assert isinstance(stricter, StoredSearchResult) and stricter.threshold > result.threshold
    user = main.face_owners([next(iter(stored))])[next(iter(stored))].user_id
    verify = search_message(pack, query, JobKind.VERIFY, None, user_id=user)
    verified = run_job(redis_client, IndexHandler(main, vectors, object_store, presign=str, binary=binary), verify)
    assert isinstance(verified, VerifyResult) and verified.threshold == default_threshold(pack) and verified.match


def test_an_enrollment_through_the_stage_is_published_before_it_is_served(
    repositories: tuple[MainRepository, VectorRepository],
    feed: GalleryFeed,
    pack: str,
    redis_client: redis.Redis,
    object_store: ObjectStore,
) -> None:
    main, vectors = repositories
    gallery(main, vectors, pack, size=5)
    searching = BinaryIndex(vectors, feed, candidates=10)
    searching.load(pack, DIM)
    user = main.create_user(f"binary.{uuid.uuid4().hex[:8]}@example.com", "Enrolled Person")
    assert user is not None
    newcomer = unit(np.random.default_rng(7).normal(size=DIM))
    enrolling = IndexHandler(main, vectors, object_store, presign=str, feed=feed)
    message = search_message(pack, newcomer, JobKind.ENROLL, None, user_id=user.id)
    enrolled = run_job(redis_client, enrolling, message)
    [(_, fields)] = redis_client.xrange(feed.stream)
    assert decode_fields(fields)["change"] == "add"
    searcher = IndexHandler(main, vectors, object_store, presign=str, binary=searching)
    result = run_job(redis_client, searcher, job(pack, newcomer))
    assert isinstance(result, StoredSearchResult) and result.gallery_size == 6
    assert result.faces[0].matches[0].face_id == enrolled.face_id  # type: ignore[attr-defined]


class FeedDown(GalleryFeed):
    def publish(self, change: Change, pack: str, face_ids: list[int], collection_id: int = 1) -> None:
        raise redis.ConnectionError("feed down")


def test_an_enrollment_the_feed_did_not_take_is_not_served_and_its_redo_is(
    repositories: tuple[MainRepository, VectorRepository],
    feed: GalleryFeed,
    pack: str,
    redis_client: redis.Redis,
    object_store: ObjectStore,
) -> None:
    main, vectors = repositories
    user = main.create_user(f"binary.{uuid.uuid4().hex[:8]}@example.com", "Unpublished Person")
    assert user is not None
    newcomer = unit(np.random.default_rng(8).normal(size=DIM))
    message = search_message(pack, newcomer, JobKind.ENROLL, None, user_id=user.id)
    down = IndexHandler(main, vectors, object_store, presign=str, feed=FeedDown(redis_client, stream=feed.stream))
    with pytest.raises(DependencyUnavailable):
        down.handle(message)
    # Not served: no process can have missed a face that is not there to find; the runner delivers it again.
    assert main.count_faces(user.id) == 0
    IndexHandler(main, vectors, object_store, presign=str, feed=feed).handle(message)
    assert main.count_faces(user.id) == 1
    [(_, fields)] = redis_client.xrange(feed.stream)
    assert decode_fields(fields)["change"] == "add"
