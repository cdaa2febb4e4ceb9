"""Submitting a job in one MULTI (common/job_submit.py): one round trip, the idempotency claim checked in the same
step as the writes, a refused claim or cap that stores nothing, an answer lost after the script resolved from what
Redis holds, a duplicate that arrives while the first is submitting, and an upload check that needs no decode slot
for a whole JPEG. Counted in Valkey (blobs, job hashes, detect entries, the idempotency records) and the S3 bucket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
import structlog

from common import status
from common.job_submit import ClaimCheck, JobSubmitter, Queued, Writes
from common.transient import BLOB_PREFIX, BYTES_KEY, photo_blob_key
from ingest_api import idempotency as idempotency_records
from ingest_api.idempotency import KEY_PREFIX
from operations.services import LocalServices
from schemas.jobs import JOB_DONE_CHANNEL, JOB_KEY_PREFIX, job_key
from schemas.results import DetectResult, FinishedResult
from schemas.streams import Stage
from tests.api.robust_support import (
    API_TEST_DB,
    api_config,
    create_api_key,
    jpeg,
    own_bucket,
    running_app,
    valkey_client,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def valkey(services: LocalServices) -> Iterator[redis.Redis]:
    client = valkey_client(services)
    yield client
    client.close()


def entries(valkey: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in valkey.xrange(Stage.DETECT.stream)]


def blobs(valkey: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in valkey.scan_iter(f"{BLOB_PREFIX}*"))


def job_hashes(valkey: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in valkey.scan_iter("fecapass:job:*"))


def idempotency_records_held(valkey: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(valkey.get(k) or b"{}") for k in valkey.scan_iter(f"{KEY_PREFIX}*")]


def search(client: httpx.AsyncClient, key: str, photo: bytes, idempotency: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"X-API-Key": key, **({"Idempotency-Key": idempotency} if idempotency else {})}
    return client.post("/v1/search", files={"file": ("a.jpg", photo, "image/jpeg")}, headers=headers)


def command_calls(valkey: redis.Redis) -> dict[str, int]:
    return {name: int(stats["calls"]) for name, stats in valkey.info("commandstats").items()}


def test_a_search_is_queued_by_one_script_with_its_photo_hash_entry_and_record(
    services: LocalServices, valkey: redis.Redis
) -> None:
    key = create_api_key(services, "read")
    photo = jpeg(seed=41)

    async def scenario() -> tuple[httpx.Response, dict[str, int], dict[str, int]]:
        async with running_app(api_config(services)) as (_, client):
            await search(client, key, jpeg(seed=40))  # the backlog figure and the active pack are read once
            before = command_calls(valkey)
            answer = await search(client, key, photo, idempotency="one-trip")
            return answer, before, command_calls(valkey)

    answer, before, after = asyncio.run(scenario())
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    sent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    # The claim's SET NX, then one MULTI for everything else: the photo's SET and the submit script; no separate put,
    # no WATCH. (Valkey counts the commands a script calls too: those of the script are there, and no more.)
    assert sent.get("cmdstat_multi") == 1 and sent.get("cmdstat_exec") == 1, sent
    assert sent.get("cmdstat_eval") == 1 and not sent.get("cmdstat_evalsha") and not sent.get("cmdstat_watch"), sent
    assert sent.get("cmdstat_xadd") == 1 and sent.get("cmdstat_hset") == 1, sent
    assert valkey.get(photo_blob_key(job_id)) == photo
    assert sum(int(v) for v in valkey.hvals(BYTES_KEY)) == len(photo) + len(jpeg(seed=40))  # both photos counted
    assert valkey.hget(job_key(job_id), "state") == b"queued" and valkey.ttl(job_key(job_id)) > 0
    assert [e[b"job_id"] for e in entries(valkey)][-1] == job_id.encode()
    assert [record["job_id"] for record in idempotency_records_held(valkey)] == [job_id]


def test_the_script_refuses_a_claim_taken_over_and_stores_nothing(services: LocalServices, valkey: redis.Redis) -> None:
    """A pending claim that outlived its expiry and was taken by a retry: the first request queues nothing."""
    claimed = f"{KEY_PREFIX}takeover"

    async def scenario() -> tuple[Queued, Queued]:
        client = redis.asyncio.Redis(
            port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password
        )
        try:
            submitter = JobSubmitter(client, ttl_seconds=60, max_bytes=10_000_000)
            await client.set(claimed, b"theirs")
            taken = await submitter.queue(
                [(photo_blob_key("j1"), b"photo-1")], _writes("j1", claimed), ClaimCheck(claimed, b"mine")
            )
            await client.delete(claimed)  # expired and not taken by anyone: still this request's to finish
            expired = await submitter.queue(
                [(photo_blob_key("j2"), b"photo-2")], _writes("j2", claimed), ClaimCheck(claimed, b"mine")
            )
            return taken, expired
        finally:
            await client.aclose()

    taken, expired = asyncio.run(scenario())
    assert taken is Queued.CLAIM_LOST and expired is Queued.QUEUED
    # Only the second is anywhere: its photo (counted), its hash, its entry and its final record.
    assert blobs(valkey) == [photo_blob_key("j2")]
    assert sum(int(v) for v in valkey.hvals(BYTES_KEY)) == len(b"photo-2")
    assert job_hashes(valkey) == [job_key("j2")] and [e[b"job_id"] for e in entries(valkey)] == [b"j2"]
    assert valkey.get(claimed) == b'{"job_id": "j2"}'


def _writes(job_id: str, claimed: str) -> Writes:
    writes = Writes()
    writes.hset(job_key(job_id), {"kind": "search", "state": "queued"})
    writes.expire(job_key(job_id), 60)
    writes.xadd(Stage.DETECT.stream, {"job_id": job_id, "image_key": photo_blob_key(job_id)})
    writes.set(claimed, json.dumps({"job_id": job_id}), ex=60)
    return writes


def test_a_claim_taken_over_during_the_submit_is_answered_409_and_nothing_is_stored(
    services: LocalServices, valkey: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_api_key(services, "read")
    begin = idempotency_records.begin

    async def begin_then_lose_it(client: Any, claim_key: Any, digest: str) -> Any:
        started = await begin(client, claim_key, digest)
        await client.set(claim_key.redis_key, json.dumps({"fingerprint": digest, "pending": "a-retry"}))
        return started

    monkeypatch.setattr(idempotency_records, "begin", begin_then_lose_it)

    async def scenario() -> httpx.Response:
        async with running_app(api_config(services)) as (_, client):
            return await search(client, key, jpeg(seed=42), idempotency="taken-over")

    answer = asyncio.run(scenario())
    assert answer.status_code == 409 and answer.json()["code"] == "idempotency_key_in_progress", answer.text
    assert blobs(valkey) == [] and job_hashes(valkey) == [] and entries(valkey) == []
    assert [record["pending"] for record in idempotency_records_held(valkey)] == ["a-retry"]  # the retry's, kept


def test_an_answer_lost_after_the_script_keeps_the_job_and_the_retry_gets_it(
    services: LocalServices, valkey: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_api_key(services, "read")
    photo = jpeg(seed=43)
    queue = JobSubmitter.queue

    async def queued_then_lost(self: JobSubmitter, *args: Any, **kwargs: Any) -> Queued:
        await queue(self, *args, **kwargs)  # Redis ran the script...
        raise redis.exceptions.ConnectionError("Connection reset by peer")  # ...and its answer never came

    async def scenario() -> tuple[httpx.Response, httpx.Response, list[dict[str, Any]]]:
        async with running_app(api_config(services)) as (_, client):
            with monkeypatch.context() as patch, structlog.testing.capture_logs() as logs:
                patch.setattr(JobSubmitter, "queue", queued_then_lost)
                lost = await search(client, key, photo, idempotency="lost-answer")
            return lost, await search(client, key, photo, idempotency="lost-answer"), logs

    lost, retried, logs = asyncio.run(scenario())
    assert lost.status_code == 503 and lost.json()["code"] == "dependency_unavailable", lost.text
    assert [entry["event"] for entry in logs if entry["event"].startswith("api.orphan")] == [], logs
    assert any(entry["event"] == "api.queued_despite_error" for entry in logs), logs
    assert retried.status_code == 202, retried.text
    job_id = retried.json()["job_id"]
    # One job, whole: its photo was not deleted as an orphan, and the retry got it instead of a second one.
    assert blobs(valkey) == [photo_blob_key(job_id)] and valkey.get(photo_blob_key(job_id)) == photo
    assert job_hashes(valkey) == [job_key(job_id)] and [e[b"job_id"] for e in entries(valkey)] == [job_id.encode()]


def test_a_duplicate_sent_during_the_submit_waits_for_it_and_gets_the_same_job(
    services: LocalServices, valkey: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = create_api_key(services, "read")
    photo = jpeg(seed=44)
    queue = JobSubmitter.queue

    async def scenario() -> tuple[httpx.Response, httpx.Response, bool]:
        reached, go_on = asyncio.Event(), asyncio.Event()

        async def held_back(self: JobSubmitter, *args: Any, **kwargs: Any) -> Queued:
            reached.set()
            await go_on.wait()
            return await queue(self, *args, **kwargs)

        async with running_app(api_config(services)) as (_, client):
            with monkeypatch.context() as patch:
                patch.setattr(JobSubmitter, "queue", held_back)
                first = asyncio.create_task(search(client, key, photo, idempotency="during"))
                await reached.wait()  # the first holds the claim and is about to run its script
                patch.setattr(JobSubmitter, "queue", queue)
                duplicate = asyncio.create_task(search(client, key, photo, idempotency="during"))
                await asyncio.sleep(0.3)  # the duplicate polls the pending record meanwhile
                waited = not duplicate.done()
                go_on.set()
                return await first, await duplicate, waited

    first, duplicate, waited = asyncio.run(scenario())
    assert waited
    assert first.status_code == 202 and duplicate.status_code == 202, (first.text, duplicate.text)
    assert duplicate.json()["job_id"] == first.json()["job_id"]
    assert len(job_hashes(valkey)) == 1 and len(entries(valkey)) == 1 and len(blobs(valkey)) == 1


def test_past_the_cap_nothing_is_stored_and_the_key_is_free_for_the_retry(
    services: LocalServices, valkey: redis.Redis
) -> None:
    key = create_api_key(services, "read")
    photo = jpeg(seed=45, size=(1000, 800))  # ~600 KB: one fits under the smallest cap, two do not
    config = api_config(services, pipeline={"transient_max_bytes": 1024 * 1024})

    async def scenario() -> tuple[httpx.Response, httpx.Response, list[str], int, httpx.Response]:
        async with running_app(config) as (_, client):
            first = await search(client, key, photo)
            refused = await search(client, key, jpeg(seed=46, size=(1000, 800)), idempotency="capped")
            held = blobs(valkey)
            counted = sum(int(v) for v in valkey.hvals(BYTES_KEY))
            valkey.delete(*held)  # the first job ends (as its final write would, count aside)
            valkey.delete(BYTES_KEY)
            return first, refused, held, counted, await search(client, key, jpeg(seed=46, size=(1000, 800)), "capped")

    first, refused, held, counted, retried = asyncio.run(scenario())
    assert first.status_code == 202, first.text
    assert refused.status_code == 429 and refused.json()["code"] == "backlog_full", refused.text
    # The refused photo was stored and counted inside the MULTI, then deleted and uncounted in the same step.
    assert held == [photo_blob_key(first.json()["job_id"])] and counted == len(photo)
    assert retried.status_code == 202, retried.text  # its key was released, not left pending
    assert len(job_hashes(valkey)) == 2 and len(entries(valkey)) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"\xff\xd8\xff" + bytes(range(256)) * 8 + b"\xff\xd9", 415),  # a JPEG's first and last bytes, no JPEG
        (b"\xff\xd8\xff\xe0" + b"\0" * 4000, 415),
        (jpeg(seed=47)[:-400], 422),  # a real JPEG cut short: no end marker, decoded and refused
        (b"GIF89a" + b"\xff\xd9", 415),
    ],
)
def test_bytes_that_are_not_a_whole_image_store_nothing(
    services: LocalServices, valkey: redis.Redis, body: bytes, status: int
) -> None:
    bucket = "fecapass-api-robust-submit"
    store = own_bucket(services, bucket)
    key = create_api_key(services, "read")

    async def scenario() -> httpx.Response:
        async with running_app(api_config(services, bucket=bucket)) as (_, client):
            return await search(client, key, body)

    answer = asyncio.run(scenario())
    assert answer.status_code == status, answer.text
    assert blobs(valkey) == [] and job_hashes(valkey) == [] and entries(valkey) == []
    assert store.keys("") == []


def test_a_whole_jpeg_is_checked_without_a_decode_slot(services: LocalServices, valkey: redis.Redis) -> None:
    """While every decode slot is taken, a whole JPEG is still admitted (its check decodes nothing); a PNG, which
    is inflated to be checked, waits for a slot and is answered 503 busy."""
    key = create_api_key(services, "read")
    config = api_config(services, api={"max_concurrent_decodes": 1, "decode_wait_seconds": 0.2})
    png = own_png()

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with running_app(config) as (app, client):
            async with app.state.fecapass.decodes.slot(1):  # another upload's check is running
                whole = await search(client, key, jpeg(seed=48))
                inflated = await client.post(
                    "/v1/search", files={"file": ("a.png", png, "image/png")}, headers={"X-API-Key": key}
                )
            return whole, inflated

    whole, inflated = asyncio.run(scenario())
    assert whole.status_code == 202, whole.text
    assert inflated.status_code == 503 and inflated.json()["code"] == "busy", inflated.text
    assert len(entries(valkey)) == 1


def own_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def finish(valkey: redis.Redis, job_id: str) -> None:
    """What the stage that finishes a job writes (common/runner.py's settle script): the final fields and the
    wake-up on the job-done channel."""
    _, fields = status.done(FinishedResult.without_photos(DetectResult(faces_seen=0, faces=[])))
    with valkey.pipeline(transaction=True) as pipe:
        pipe.hset(job_key(job_id), mapping=dict(zip(fields[::2], fields[1::2], strict=True)))
        pipe.publish(JOB_DONE_CHANNEL, job_id)
        pipe.execute()


def test_a_waiting_caller_reads_its_job_once_when_it_is_done(services: LocalServices, valkey: redis.Redis) -> None:
    """The job is watched from before it is queued, so the job's hash is read once, when the job is done: not
    first to see whether it finished before the watch began. Counted against a caller who does not wait (the
    submit script's own HGETALL is of the byte counter, common/transient.py)."""
    key = create_api_key(services, "read")
    headers = {"X-API-Key": key}

    def hgetalls() -> int:
        return command_calls(valkey).get("cmdstat_hgetall", 0)

    async def scenario() -> tuple[int, int, httpx.Response]:
        async with running_app(api_config(services)) as (_, client):
            await search(client, key, jpeg(seed=50))  # the backlog figure and the active pack are read once
            before = hgetalls()
            queued = await client.post("/v1/detect", files={"file": ("a.jpg", jpeg(seed=51))}, headers=headers)
            assert queued.status_code == 202, queued.text
            unwaited, known = hgetalls() - before, set(job_hashes(valkey))
            before = hgetalls()
            waiting = asyncio.create_task(
                client.post("/v1/detect?wait=30", files={"file": ("a.jpg", jpeg(seed=52))}, headers=headers)
            )
            while not (new := set(job_hashes(valkey)) - known):
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # the request is waiting now
            finish(valkey, new.pop().removeprefix(JOB_KEY_PREFIX))
            answer = await asyncio.wait_for(waiting, timeout=10)
            return unwaited, hgetalls() - before, answer

    unwaited, waited, answer = asyncio.run(scenario())
    assert answer.status_code == 200 and answer.json()["state"] == "done", answer.text
    assert waited == unwaited + 1, (waited, unwaited)


def test_a_job_done_as_soon_as_it_is_queued_still_answers_the_caller_at_once(
    services: LocalServices, valkey: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its finish is published before the submit returns: the watch began before, so the caller is answered then,
    not after its 30 s of wait."""
    key = create_api_key(services, "read")
    queue = JobSubmitter.queue

    async def queued_and_finished(self: JobSubmitter, blobs: Any, writes: Writes, check: Any) -> Queued:
        outcome = await queue(self, blobs, writes, check)
        for job_id in set(job_hashes(valkey)) - done:
            finish(valkey, job_id.removeprefix(JOB_KEY_PREFIX))
        return outcome

    done = set(job_hashes(valkey))
    monkeypatch.setattr(JobSubmitter, "queue", queued_and_finished)

    async def scenario() -> httpx.Response:
        async with running_app(api_config(services)) as (_, client):
            headers = {"X-API-Key": key}
            sent = client.post("/v1/detect?wait=30", files={"file": ("a.jpg", jpeg(seed=52))}, headers=headers)
            return await asyncio.wait_for(sent, timeout=10)

    answer = asyncio.run(scenario())
    assert answer.status_code == 200 and answer.json()["state"] == "done", answer.text
