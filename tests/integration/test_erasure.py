"""Erasure against the real servers: an erased face or person stays erased whatever is delivered again, and nothing
about them is left in PostgreSQL, Redis or the S3 bucket.

The index stage runs for real (its handler in the shared runner); the stages before it are stood in for by the
entries they write (detect, align, embed need models; what matters here is what their entries carry).
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis

from common import status
from common.db.erasure import Erasure
from common.db.job_traces import queue_job_owner
from common.db.main_repository import MainRepository
from common.db.vector_repository import VectorRepository
from common.objects import ObjectStore, crop_key, original_key
from common.runner import StageRunner, ensure_group
from common.settings import StreamSettings
from indexer.gallery_feed import GalleryFeed
from indexer.stage import IndexHandler
from operations import dlq
from schemas.jobs import job_key
from schemas.results import StoredSearchResult
from schemas.streams import (
    AlignedFace,
    AlignedMessage,
    DetectedMessage,
    EmbeddedMessage,
    FaceBox,
    JobKind,
    JobMessage,
    Stage,
    StreamMessage,
    encode_embeddings,
)
from schemas.text import decode_fields
from tests.conftest import unit

PACK, DIM, TTL = "erase8", 8, 600
# Redelivery without waiting: a failed entry is claimed again by the next iteration.
QUICK = StreamSettings(read_count=8, block_ms=20, claim_idle_ms=1, max_deliveries=5, retry_backoff_ms=1)
CLOSED_FIELDS = {"kind", "state", "error_code", "error_message", "finished_at"}


def presign(key: str) -> str:
    return f"https://s3.invalid/{key}"


@dataclass
class World:
    main: MainRepository
    vectors: VectorRepository
    store: ObjectStore
    redis: redis.Redis
    erasure: Erasure
    handler: IndexHandler

    def runner(self, handler: IndexHandler | None = None, consumer: str = "index-a") -> StageRunner:
        return StageRunner(self.redis, handler or self.handler, QUICK, job_ttl_seconds=TTL, consumer=consumer)


def world_over(
    repositories: tuple[MainRepository, VectorRepository],
    store: ObjectStore,
    client: redis.Redis,
    feed: GalleryFeed | None = None,
) -> World:
    """Every stage's consumer group, an erasure and the index stage (publishing to ``feed``) on these servers."""
    main, vectors = repositories
    for stage in Stage:
        ensure_group(client, stage)
    return World(
        main,
        vectors,
        store,
        client,
        Erasure(main, vectors, store, client, TTL),
        IndexHandler(main, vectors, store, threshold=0.5, presign=presign, feed=feed),
    )


@pytest.fixture
def world(
    repositories: tuple[MainRepository, VectorRepository], object_store: ObjectStore, redis_client: redis.Redis
) -> World:
    return world_over(repositories, object_store, redis_client)


@dataclass
class Enroll:
    user_id: int
    job_id: str
    embedding: np.ndarray
    box: tuple[float, float, float, float]
    entries: dict[Stage, StreamMessage]

    @property
    def embedding_b64(self) -> bytes:
        return base64.b64encode(encode_embeddings(self.embedding[None, :]))


def new_user(world: World) -> int:
    return world.main.create_user(f"{uuid.uuid4().hex}@example.com", "Erin").id


def submit(world: World, user_id: int, *, up_to: Stage, rng: np.random.Generator) -> Enroll:
    """An enroll job as the API and the stages before ``up_to`` leave it: photo and crop in S3, status hash, the
    user's job set, and an entry in each stream up to ``up_to`` (the earlier ones handled and acknowledged)."""
    job_id = uuid.uuid4().hex
    world.store.put(original_key(job_id), b"photo of " + job_id.encode())
    base = JobMessage(
        job_id=job_id,
        kind=JobKind.ENROLL,
        image_key=original_key(job_id),
        user_id=user_id,
        pack=PACK,
        callback_url="http://127.0.0.1:9/hook",
    )
    with world.redis.pipeline(transaction=True) as pipe:  # as the API submits: hash, detect entry, job owner
        status.queue_job(pipe, base, TTL)
        queue_job_owner(pipe, user_id, job_id, TTL)
        pipe.execute()
    # Fractions no timestamp or id is likely to contain, so that the box can be searched for as text.
    x, y = (float(v) for v in rng.integers(100, 800, 2))
    box = (x + 0.109375, y + 0.203125, x + 80.296875, y + 90.390625)
    face = FaceBox(box=box, keypoints=[(box[0] + i, box[1] + i) for i in range(5)], score=0.93)
    detected = base.advance(DetectedMessage, faces=[face], faces_seen=1, crop_size=112)
    aligned = detected.advance(AlignedMessage, faces=[AlignedFace(**dict(face), crop_key=crop_key(job_id, 0))])
    embedding = unit(rng.standard_normal(DIM))
    embedded = aligned.advance(EmbeddedMessage, embeddings=encode_embeddings(embedding[None, :]), dim=DIM)
    entries: dict[Stage, StreamMessage] = {
        Stage.DETECT: base,
        Stage.ALIGN: detected,
        Stage.EMBED: aligned,
        Stage.INDEX: embedded,
    }
    for stage, message in entries.items():
        if stage in (Stage.EMBED, Stage.INDEX):  # align stored the crop
            world.store.put(crop_key(job_id, 0), b"crop of " + job_id.encode())
        if stage is not Stage.DETECT:  # the detect entry came with the job
            world.redis.xadd(stage.stream, message.to_fields())
        if stage is up_to:
            break
        acknowledge(world.redis, stage)
    return Enroll(user_id, job_id, embedding, box, entries)


def acknowledge(client: redis.Redis, stage: Stage) -> None:
    """What the stage's worker did with its new entries: read, handled, acknowledged."""
    read = client.xreadgroup(stage.group, "stand-in", {stage.stream: ">"}, count=100)
    for _, rows in read or []:
        for entry_id, _ in rows:
            client.xack(stage.stream, stage.group, entry_id)


def enrolled(world: World, rng: np.random.Generator) -> Enroll:
    enroll = submit(world, new_user(world), up_to=Stage.INDEX, rng=rng)
    assert world.runner().run_once() == 1
    assert job(world.redis, enroll.job_id)["state"] == "done"
    return enroll


def job(client: redis.Redis, job_id: str) -> dict[str, str]:
    return decode_fields(client.hgetall(job_key(job_id)))


def index_fields(client: redis.Redis, job_id: str) -> dict[bytes, bytes]:
    rows = [fields for _, fields in client.xrange(Stage.INDEX.stream) if fields[b"job_id"] == job_id.encode()]
    assert rows, "the job has no index entry"
    return dict(rows[0])


def face_rows(world: World, job_id: str) -> list[tuple[Any, ...]]:
    """Every row of the job, served or not (the repository's reads show served faces only)."""
    with world.main.pool.connection() as conn:
        return conn.execute("SELECT id, served FROM faces WHERE job_id = %s", (job_id,)).fetchall()


def embeddings_of(world: World, enroll: Enroll) -> int:
    """Stored vectors equal to the job's embedding, whatever face id they are filed under."""
    with world.vectors.pool.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM face_embeddings WHERE embedding = %s::vector", (enroll.embedding,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def search_entry(embedding: np.ndarray) -> EmbeddedMessage:
    """The index stage's entry of a search of one face with this embedding."""
    return EmbeddedMessage(
        job_id=uuid.uuid4().hex,
        kind=JobKind.SEARCH,
        image_key="originals/query",
        faces=[AlignedFace(box=(0, 0, 10, 10), keypoints=[(1, 1)] * 5, score=0.9, crop_key="crops/query/0.png")],
        faces_seen=1,
        crop_size=112,
        embeddings=encode_embeddings(embedding[None, :]),
        dim=DIM,
        pack=PACK,
    )


def search_matches(world: World, enroll: Enroll) -> list[int]:
    """Face ids a search with the job's own embedding finds."""
    finished = world.handler.handle(search_entry(enroll.embedding)).result
    assert finished is not None and isinstance(finished.stored, StoredSearchResult)
    return [match.face_id for face in finished.stored.faces for match in face.matches]


def redis_contents(client: redis.Redis) -> list[tuple[bytes, bytes, bytes]]:
    """Every (key, field, value) Redis holds in this database: hash fields, stream entry fields, set members,
    strings, list items; for a stream the entry id is part of the field."""
    found: list[tuple[bytes, bytes, bytes]] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            found += [(key, f, v) for f, v in client.hgetall(key).items()]
        elif kind == b"stream":
            for entry_id, fields in client.xrange(key):
                found += [(key, entry_id + b" " + f, v) for f, v in fields.items()]
        elif kind == b"set":
            found += [(key, b"", member) for member in client.smembers(key)]
        elif kind == b"string":
            found.append((key, b"", client.get(key) or b""))
        elif kind == b"list":
            found += [(key, b"", item) for item in client.lrange(key, 0, -1)]
        else:
            found.append((key, kind, b""))
    return found


def traces_of(world: World, enroll: Enroll, *, user: bool) -> list[str]:
    """Everything in Redis and the bucket that names the job, carries its embedding or its box, or (``user``)
    names its user."""
    needles = [enroll.job_id.encode(), enroll.embedding_b64, *(repr(v).encode() for v in enroll.box)]
    user_json = re.compile(rb'"user_id":\s*%d\b' % enroll.user_id)
    found = []
    for key, name, value in redis_contents(world.redis):
        text = b"\0".join((key, name, value))
        if any(needle in text for needle in needles):
            found.append(f"{key!r} {name!r}: {value[:80]!r}")
        elif user and (
            (name.endswith(b"user_id") and value == str(enroll.user_id).encode())
            or user_json.search(value)
            or key.endswith(b":%d" % enroll.user_id)
        ):
            found.append(f"{key!r} {name!r}: {value[:80]!r} (user)")
    # XDEL leaves an entry's bytes in its listpack node: the serialized dead-letter streams must not hold them.
    for stage in Stage:
        dumped = world.redis.dump(stage.dead_letter_stream) or b""
        # The serialization compresses (LZF: literal runs of at most 32 bytes): look for any 12 bytes of it.
        pieces = {needle[i : i + 12] for needle in needles[:2] for i in range(len(needle) - 11)}
        if any(piece in dumped for piece in pieces):
            found.append(f"{stage.dead_letter_stream} (serialized)")
    found += [f"s3 {key}" for key in world.store.keys("") if enroll.job_id in key]
    return found


# -- erased stays erased ---------------------------------------------------------------------------------------


def test_a_redelivered_index_entry_of_an_erased_face_stores_nothing(world: World) -> None:
    enroll = enrolled(world, np.random.default_rng(1))
    ((face_id, served),) = face_rows(world, enroll.job_id)
    assert served and search_matches(world, enroll)[0] == face_id
    original = index_fields(world.redis, enroll.job_id)

    assert world.erasure.erase_face(face_id)
    world.redis.xadd(Stage.INDEX.stream, original)  # the exact entry, delivered again
    assert world.runner().run_once() == 1

    state = job(world.redis, enroll.job_id)
    assert state["state"] == "failed" and state["error_code"] == "face_erased"
    assert face_rows(world, enroll.job_id) == []
    assert embeddings_of(world, enroll) == 0
    assert search_matches(world, enroll) == []
    assert world.main.count_faces(enroll.user_id) == 0


def test_an_entry_held_by_a_worker_killed_before_its_xack_stays_erased(world: World) -> None:
    """The worker committed the face and died before XACK; the face is erased; the entry is then claimed."""
    enroll = submit(world, new_user(world), up_to=Stage.INDEX, rng=np.random.default_rng(2))
    read = world.redis.xreadgroup(Stage.INDEX.group, "killed", {Stage.INDEX.stream: ">"}, count=1)
    message = EmbeddedMessage.from_fields(read[0][1][0][1])
    world.handler.handle(message)  # its commits, then nothing: no XACK
    ((face_id, _),) = face_rows(world, enroll.job_id)

    assert world.erasure.erase_face(face_id)
    time.sleep(0.01)  # idle past claim_idle_ms (1 ms)
    assert world.runner().run_once() == 1  # claimed from the dead consumer

    assert job(world.redis, enroll.job_id)["error_code"] == "face_erased"
    assert face_rows(world, enroll.job_id) == [] and embeddings_of(world, enroll) == 0
    assert int(world.redis.xpending(Stage.INDEX.stream, Stage.INDEX.group)["pending"]) == 0


def test_a_dlq_replay_of_an_erased_face_stores_nothing(world: World) -> None:
    enroll = enrolled(world, np.random.default_rng(3))
    ((face_id, _),) = face_rows(world, enroll.job_id)
    # An earlier delivery of the job had been dead-lettered; an operator holds on to it.
    dead = {**index_fields(world.redis, enroll.job_id), b"dead_original_id": b"1-1", b"dead_error_code": b"internal"}
    dead_id = world.redis.xadd(Stage.INDEX.dead_letter_stream, dead).decode()
    letter = dlq.find(world.redis, Stage.INDEX, dead_id)
    assert letter is not None

    assert world.erasure.erase_face(face_id)
    assert dlq.find(world.redis, Stage.INDEX, dead_id) is None  # erasure took the dead letter too
    dlq.replay(world.redis, letter, TTL)  # the operator's copy, replayed anyway
    assert job(world.redis, enroll.job_id)["state"] == "indexing"
    assert world.runner().run_once() == 1

    state = job(world.redis, enroll.job_id)
    assert state["state"] == "failed" and state["error_code"] == "face_erased"
    assert face_rows(world, enroll.job_id) == [] and embeddings_of(world, enroll) == 0
    assert search_matches(world, enroll) == []


class FailingOnce:
    """Wraps a repository: the first call of the named method does its work (commits), then raises."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner, self.method, self.failed = inner, method, False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name != self.method:
            return attribute

        def once(*args: Any, **kwargs: Any) -> Any:
            result = attribute(*args, **kwargs)
            if not self.failed:
                self.failed = True
                raise RuntimeError(f"process killed right after {name}")
            return result

        return once


def test_a_crash_between_the_main_and_the_vector_commit_serves_nothing_and_redelivery_completes(world: World) -> None:
    enroll = submit(world, new_user(world), up_to=Stage.INDEX, rng=np.random.default_rng(4))
    # The face row committed, then the worker dies.
    crashing = IndexHandler(FailingOnce(world.main, "add_face"), world.vectors, world.store, 0.5, presign=presign)
    assert world.runner(crashing).run_once() == 1

    ((face_id, served),) = face_rows(world, enroll.job_id)
    assert not served and embeddings_of(world, enroll) == 0
    assert world.main.get_face(face_id) is None and world.main.list_faces(enroll.user_id) == []
    assert search_matches(world, enroll) == []
    assert job(world.redis, enroll.job_id)["state"] == "indexing"

    time.sleep(0.01)
    assert world.runner(crashing).run_once() == 1  # redelivered: the same row, now with its embedding
    assert face_rows(world, enroll.job_id) == [(face_id, True)] and embeddings_of(world, enroll) == 1
    assert search_matches(world, enroll)[0] == face_id
    assert job(world.redis, enroll.job_id)["state"] == "done"


def test_a_crash_after_the_vector_commit_returns_nothing_and_an_erasure_then_is_completed(world: World) -> None:
    enroll = submit(world, new_user(world), up_to=Stage.INDEX, rng=np.random.default_rng(5))
    crashing = IndexHandler(world.main, FailingOnce(world.vectors, "add_embedding"), world.store, 0.5, presign=presign)
    assert world.runner(crashing).run_once() == 1
    ((_, served),) = face_rows(world, enroll.job_id)
    assert not served and embeddings_of(world, enroll) == 1
    assert search_matches(world, enroll) == []  # the vector is found, its face is not served

    assert world.erasure.erase_user(enroll.user_id)  # the unserved face is erased with the rest
    assert embeddings_of(world, enroll) == 0
    time.sleep(0.01)
    assert world.runner(crashing).run_once() == 1  # the entry was held: redelivered, refused

    state = job(world.redis, enroll.job_id)
    assert state["state"] == "failed" and state["error_code"] == "user_not_found"
    assert face_rows(world, enroll.job_id) == [] and embeddings_of(world, enroll) == 0
    assert world.store.keys(f"crops/{enroll.job_id}/") == [] and world.store.keys(original_key(enroll.job_id)) == []


def test_an_embedding_written_after_the_erasure_deleted_it_is_deleted_by_the_last_check(world: World) -> None:
    """A paused worker: its face row was committed, the erasure runs whole, then it writes the embedding."""
    enroll = submit(world, new_user(world), up_to=Stage.INDEX, rng=np.random.default_rng(6))
    erasure = world.erasure

    class ErasedMeanwhile(VectorRepository):
        def add_embedding(self, face_id: int, pack: str, embedding: np.ndarray, collection_id: int = 1) -> None:
            assert erasure.erase_user(enroll.user_id)
            super().add_embedding(face_id, pack, embedding, collection_id)

    paused = IndexHandler(world.main, ErasedMeanwhile(world.vectors.pool), world.store, 0.5, presign=presign)
    assert world.runner(paused).run_once() == 1

    assert job(world.redis, enroll.job_id)["error_code"] == "user_not_found"
    assert face_rows(world, enroll.job_id) == [] and embeddings_of(world, enroll) == 0
    assert world.main.get_user(enroll.user_id) is None


@pytest.mark.parametrize("stage", [Stage.DETECT, Stage.ALIGN, Stage.EMBED, Stage.INDEX])
def test_deleting_a_user_while_their_enroll_waits_in_a_stage_stores_nothing(world: World, stage: Stage) -> None:
    enroll = submit(world, new_user(world), up_to=stage, rng=np.random.default_rng(7))
    assert world.erasure.erase_user(enroll.user_id)

    # The entry is gone from its stream and nothing else names the job but its closed status.
    assert set(job(world.redis, enroll.job_id)) == CLOSED_FIELDS
    assert job(world.redis, enroll.job_id)["error_code"] == "user_not_found"
    assert not [
        t for t in traces_of(world, enroll, user=True) if not t.startswith(repr(job_key(enroll.job_id).encode()))
    ]
    assert world.runner().run_once() == 0  # nothing left to deliver

    # A worker that held the entry at that moment carries on: its successors reach the index stage.
    world.store.put(crop_key(enroll.job_id, 0), b"crop written late")
    world.redis.xadd(Stage.INDEX.stream, enroll.entries[Stage.INDEX].to_fields())
    assert world.runner().run_once() == 1
    state = job(world.redis, enroll.job_id)
    assert state["state"] == "failed" and state["error_code"] == "user_not_found"
    assert face_rows(world, enroll.job_id) == [] and embeddings_of(world, enroll) == 0
    assert [key for key in world.store.keys("") if enroll.job_id in key] == []


@pytest.mark.parametrize("stage", [Stage.DETECT, Stage.ALIGN, Stage.EMBED])
def test_an_entry_a_worker_holds_at_the_erasure_reaches_the_index_stage_and_stores_nothing(
    world: World, stage: Stage
) -> None:
    enroll = submit(world, new_user(world), up_to=stage, rng=np.random.default_rng(11))
    read = world.redis.xreadgroup(stage.group, "holder", {stage.stream: ">"}, count=1)
    held_id = read[0][1][0][0]

    assert world.erasure.erase_user(enroll.user_id)
    # Left to its worker, with the photo it needs; the job is closed, naming nobody.
    assert [entry_id for entry_id, _ in world.redis.xrange(stage.stream)] == [held_id]
    assert world.store.keys(original_key(enroll.job_id)) == [original_key(enroll.job_id)]
    assert set(job(world.redis, enroll.job_id)) == CLOSED_FIELDS

    # The worker finishes: its successors carry the job to the index stage.
    world.store.put(crop_key(enroll.job_id, 0), b"crop written by align")
    world.redis.xadd(Stage.INDEX.stream, enroll.entries[Stage.INDEX].to_fields())
    world.redis.xack(stage.stream, stage.group, held_id)
    assert world.runner().run_once() == 1
    assert job(world.redis, enroll.job_id)["error_code"] == "user_not_found"
    assert face_rows(world, enroll.job_id) == [] and embeddings_of(world, enroll) == 0
    assert [key for key in world.store.keys("") if enroll.job_id in key] == []


# -- nothing left ----------------------------------------------------------------------------------------------


def test_erasing_a_face_leaves_nothing_in_redis_or_the_bucket(world: World) -> None:
    rng = np.random.default_rng(8)
    kept, erased = enrolled(world, rng), enrolled(world, rng)
    for enroll in (erased, kept):  # sharing a listpack node: XDEL alone would leave the erased one's bytes in it
        dead = {**index_fields(world.redis, enroll.job_id), b"dead_error_code": b"internal"}
        world.redis.xadd(Stage.INDEX.dead_letter_stream, dead)
    assert traces_of(world, erased, user=False)  # the search below can find things

    ((face_id, _),) = face_rows(world, erased.job_id)
    assert world.erasure.erase_face(face_id)

    assert traces_of(world, erased, user=False) == []
    assert face_rows(world, erased.job_id) == [] and embeddings_of(world, erased) == 0
    assert len(traces_of(world, kept, user=True)) > 3  # another person's job is untouched
    assert face_rows(world, kept.job_id) != [] and search_matches(world, kept)


def test_erasing_a_user_leaves_nothing_in_redis_or_the_bucket_or_the_databases(world: World) -> None:
    rng = np.random.default_rng(9)
    first = enrolled(world, rng)
    second = submit(world, first.user_id, up_to=Stage.INDEX, rng=rng)
    assert world.runner().run_once() == 1
    in_flight = submit(world, first.user_id, up_to=Stage.EMBED, rng=rng)
    other = enrolled(world, rng)
    for enroll in (in_flight, other):
        world.redis.xadd(Stage.INDEX.dead_letter_stream, {**enroll.entries[Stage.INDEX].to_fields(), "dead_at": "1"})

    assert world.erasure.erase_user(first.user_id)

    for enroll in (first, second):
        assert traces_of(world, enroll, user=True) == []
        assert face_rows(world, enroll.job_id) == [] and embeddings_of(world, enroll) == 0
    in_flight_traces = traces_of(world, in_flight, user=True)
    assert set(job(world.redis, in_flight.job_id)) == CLOSED_FIELDS
    assert in_flight_traces == [t for t in in_flight_traces if t.startswith(repr(job_key(in_flight.job_id).encode()))]
    assert world.main.get_user(first.user_id) is None
    assert traces_of(world, other, user=True) and search_matches(world, other)
    # What stays in the main database: the tombstones, identifiers only.
    with world.main.pool.connection() as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_name IN ('erased_users', 'erased_faces') ORDER BY 1, 2"
        ).fetchall()
        assert conn.execute("SELECT 1 FROM erased_users WHERE user_id = %s", (first.user_id,)).fetchone()
    assert columns == [
        ("erased_faces", "erased_at"),
        ("erased_faces", "face_id"),
        ("erased_faces", "job_id"),
        ("erased_users", "erased_at"),
        ("erased_users", "user_id"),
    ]


def test_an_erasure_cut_short_is_finished_by_a_second_delete(world: World) -> None:
    enroll = enrolled(world, np.random.default_rng(10))
    ((face_id, _),) = face_rows(world, enroll.job_id)
    broken = Erasure(world.main, world.vectors, FailingStore(world.store), world.redis, TTL)
    with pytest.raises(RuntimeError):
        broken.erase_face(face_id)
    assert world.main.get_face(face_id) is None  # not served from the first commit on
    assert search_matches(world, enroll) == []
    assert world.erasure.erase_face(face_id)
    assert face_rows(world, enroll.job_id) == [] and traces_of(world, enroll, user=False) == []
    assert not world.erasure.erase_face(face_id)


class FailingStore(ObjectStore):
    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner.client, inner.bucket)

    def delete_many(self, keys: Any) -> None:
        raise RuntimeError("S3 went away mid-erasure")
