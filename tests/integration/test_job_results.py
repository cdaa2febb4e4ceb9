"""Job results and submissions on the real servers: what the index stage finishes a search with reaches the
status hash (read by the API) and the webhook stream as one and the same client-facing result; a job is queued
by one function; stream entries that are not UTF-8 are dead-lettered, not a crash; one backlog figure."""

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import redis
import redis.asyncio as aioredis

from common import status
from common.db.main_repository import MainRepository, NewFace
from common.db.vector_repository import VectorRepository
from common.metrics import StreamCollector, stream_stats
from common.objects import ObjectStore
from common.runner import StageRunner, ensure_group
from common.settings import StreamSettings
from indexer.stage import IndexHandler
from ingest_api.backpressure import Backlog
from ingest_api.jobs import job_from_hash
from operations.services import LocalServices
from schemas.api import WebhookBody
from schemas.jobs import job_key
from schemas.streams import (
    AlignedFace,
    EmbeddedMessage,
    JobKind,
    JobMessage,
    Stage,
    WebhookMessage,
    encode_embeddings,
)
from schemas.text import decode_fields
from tests.conftest import redis_client_url, unit

FAST = StreamSettings(read_count=8, block_ms=50, claim_idle_ms=100, max_deliveries=3)
PACK = "results-test"


def signed(key: str) -> str:
    """A presigner that signs the same key the same way each time, so the two paths can be compared exactly
    (a real one stamps the signing second into the URL)."""
    return f"https://photos.example/{key}?X-Amz-Signature=test"


def enrolled_face(main: MainRepository, vectors: VectorRepository) -> tuple[int, int, str]:
    """A user with one face of PACK; returns the user id, the face id and the photo's key."""
    user = main.create_user(f"results.{uuid.uuid4().hex[:8]}@example.com", "Results Person")
    assert user is not None
    job_id = uuid.uuid4().hex
    face_id = main.add_face(
        NewFace(user.id, job_id, f"originals/{job_id}", f"crops/{job_id}/0.png", (1, 2, 3, 4), 0.9, 1, PACK)
    )
    vectors.add_embedding(face_id, PACK, unit([1, 0, 0, 0]))
    main.serve_face(face_id, user.id, job_id)  # as the index stage does once the embedding is committed
    return user.id, face_id, f"originals/{job_id}"


def run_search(
    redis_client: redis.Redis,
    handler: IndexHandler,
    callback_url: str | None = None,
    *,
    kind: JobKind = JobKind.SEARCH,
    user_id: int | None = None,
    vectors: list[list[float]] | None = None,
) -> str:
    """One job's entry (a search unless told) through the real runner around the index stage; returns its id."""
    job_id = uuid.uuid4().hex
    rows = vectors or [[1, 0.1, 0, 0]]
    faces = [
        AlignedFace(box=(10, 20, 110, 140), keypoints=[(0, 0)] * 5, score=0.97, source=index, crop_key=f"c/{index}")
        for index in range(len(rows))
    ]
    message = EmbeddedMessage(
        job_id=job_id,
        kind=kind,
        image_key=f"originals/{job_id}",
        user_id=user_id,
        threshold=0.5,
        limit=5,
        pack=PACK,
        crop_size=112,
        faces=faces,
        faces_seen=1,
        embeddings=encode_embeddings(np.vstack([unit(row) for row in rows])),
        dim=4,
        callback_url=callback_url,
    )
    redis_client.hset(job_key(job_id), mapping={"kind": kind.value, "state": "embedding", "created_at": "1.0"})
    ensure_group(redis_client, Stage.INDEX)
    redis_client.xadd(Stage.INDEX.stream, message.to_fields())
    StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="results").run_once()
    return job_id


def test_search_webhook_result_equals_the_api_result(
    repositories: tuple[MainRepository, VectorRepository], redis_client: redis.Redis, object_store: ObjectStore
) -> None:
    main, vectors = repositories
    user_id, face_id, photo_key = enrolled_face(main, vectors)
    handler = IndexHandler(main, vectors, object_store, presign=signed)
    job_id = run_search(redis_client, handler, "https://receiver.example/hook")

    raw = decode_fields(redis_client.hgetall(job_key(job_id)))
    assert raw["state"] == "done"
    assert photo_key in [match["image_key"] for match in json.loads(raw["result"])["faces"][0]["matches"]]
    job = job_from_hash(raw, job_id, f"http://api.example/v1/jobs/{job_id}", signed)
    assert job is not None
    api_result = job.model_dump(mode="json")["result"]

    [(_, fields)] = redis_client.xrange(Stage.WEBHOOK.stream)
    webhook = WebhookMessage.from_fields(fields)
    body = json.loads(webhook.body)
    assert webhook.url == "https://receiver.example/hook" and body["job_id"] == job_id and body["state"] == "done"
    assert body["result"] == api_result
    # Faces enrolled by other tests of this module may match as well.
    [match] = [match for match in body["result"]["faces"][0]["matches"] if match["face_id"] == face_id]
    assert match["user_id"] == user_id and match["face_id"] == face_id and match["similarity"] > 0.99
    assert match["photo_url"] == signed(photo_key)
    assert "image_key" not in webhook.body  # the internal key never reaches a client
    assert WebhookBody.model_validate_json(webhook.body).result == job.result


def test_a_search_without_webhook_signs_no_url(
    repositories: tuple[MainRepository, VectorRepository], redis_client: redis.Redis, object_store: ObjectStore
) -> None:
    main, vectors = repositories
    enrolled_face(main, vectors)

    def refuse(key: str) -> str:
        raise AssertionError(f"signed {key} for nobody")

    job_id = run_search(redis_client, IndexHandler(main, vectors, object_store, presign=refuse))
    assert redis_client.hget(job_key(job_id), "state") == b"done"
    assert redis_client.xlen(Stage.WEBHOOK.stream) == 0


def test_verify_results_read_back_as_before(
    repositories: tuple[MainRepository, VectorRepository], redis_client: redis.Redis, object_store: ObjectStore
) -> None:
    main, vectors = repositories
    user_id, face_id, _ = enrolled_face(main, vectors)
    handler = IndexHandler(main, vectors, object_store, presign=signed)

    def result(job_id: str) -> dict[str, object]:
        job = job_from_hash(decode_fields(redis_client.hgetall(job_key(job_id))), job_id, "u", signed)
        assert job is not None and job.state == "done", job
        return job.model_dump(mode="json")["result"]  # type: ignore[no-any-return]

    against_user = result(run_search(redis_client, handler, kind=JobKind.VERIFY, user_id=user_id))
    assert against_user["user_id"] == user_id and against_user["face_id"] == face_id
    assert against_user["faces_compared"] == 1 and against_user["match"] is True
    two_photos = result(run_search(redis_client, handler, kind=JobKind.VERIFY, vectors=[[1, 0, 0, 0], [0, 1, 0, 0]]))
    assert set(two_photos) == {"threshold", "model_pack", "similarity", "match", "faces"}  # no user keys at all
    assert two_photos["similarity"] == 0.0 and two_photos["match"] is False
    assert [face["photo"] for face in two_photos["faces"]] == [0, 1]  # type: ignore[attr-defined]


def test_submitting_queues_the_status_hash_and_the_detect_entry_together(redis_client: redis.Redis) -> None:
    message = JobMessage(
        job_id="submitted", kind=JobKind.ENROLL, image_key="originals/submitted", user_id=42, pack=PACK
    )
    with redis_client.pipeline(transaction=True) as pipe:
        written = status.queue_job(pipe, message, ttl_seconds=600)
        pipe.execute()
    stored = decode_fields(redis_client.hgetall(job_key("submitted")))
    assert stored == written
    assert {key: stored[key] for key in ("kind", "image_key", "model_pack", "user_id", "state")} == {
        "kind": "enroll",
        "image_key": "originals/submitted",
        "model_pack": PACK,
        "user_id": "42",
        "state": "queued",
    }
    assert 0 < redis_client.ttl(job_key("submitted")) <= 600
    [(_, fields)] = redis_client.xrange(Stage.DETECT.stream)
    assert JobMessage.from_fields(fields) == message


class Unreadable:
    """Any stage's handler: the entry never reaches it."""

    stage = Stage.ALIGN
    message_type = JobMessage

    def handle_batch(self, messages: object) -> list[object]:
        raise AssertionError("a malformed entry reached the handler")


def test_an_entry_that_is_not_utf8_is_dead_lettered_not_a_crash(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    redis_client.xadd(Stage.ALIGN.stream, {b"v": b"1", b"job_id": b"\xffbad", b"kind": b"\xfe\xff"})
    runner = StageRunner(redis_client, Unreadable(), FAST, job_ttl_seconds=600, consumer="lenient")  # type: ignore[arg-type]
    assert runner.run_once() == 1  # the strict decoding this replaced raised UnicodeDecodeError here
    [(_, dead)] = redis_client.xrange(Stage.ALIGN.dead_letter_stream)
    assert dead[b"dead_error_code"] == b"malformed_message"
    assert dead[b"job_id"] == b"\\xffbad"  # the bytes stay visible to the operator
    assert redis_client.xpending(Stage.ALIGN.stream, Stage.ALIGN.group)["pending"] == 0


def test_backpressure_and_metrics_count_the_same_backlog(services: LocalServices, redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.EMBED)
    for index in range(5):
        redis_client.xadd(Stage.EMBED.stream, {"v": "1", "job_id": f"waiting-{index}"})
    redis_client.xreadgroup(Stage.EMBED.group, "busy", {Stage.EMBED.stream: ">"}, count=2)  # 2 pending, 3 unread
    [row] = [row for row in stream_stats(redis_client) if row.stream == Stage.EMBED.stream]
    assert (row.pending, row.lag, row.backlog) == (2, 3, 5)

    async def largest() -> int:
        client = aioredis.Redis.from_url(redis_client_url(services))
        try:
            return await Backlog(client, limit=5).largest()
        finally:
            await client.aclose()

    assert asyncio.run(largest()) == row.backlog == 5
    scraped = {
        tuple(sample.labels.values()): sample.value
        for family in StreamCollector(redis_client).collect()
        if family.name == "fecapass_stream_backlog"
        for sample in family.samples
    }
    assert scraped[(Stage.EMBED.stream, Stage.EMBED.group)] == 5
    # An entry deleted inside the unread range: Redis can no longer tell the lag; both fall back to the length.
    newest = redis_client.xrevrange(Stage.EMBED.stream, count=1)[0][0]
    redis_client.xdel(Stage.EMBED.stream, newest)
    [row] = [row for row in stream_stats(redis_client) if row.stream == Stage.EMBED.stream]
    assert row.lag is None and row.backlog == 2 + 4
    assert asyncio.run(largest()) == 6
