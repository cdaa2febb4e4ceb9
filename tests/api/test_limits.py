"""Bounded work per request: decoding budget, header-vs-data refusals, and hundreds of waiting clients."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from common import status
from ingest_api.deps import AppState
from ingest_api.problems import ApiError
from ingest_api.uploads import DecodeSlots
from operations.services import LocalServices
from schemas.jobs import JOB_DONE_CHANNEL, JobState, job_key
from schemas.results import DetectResult, FinishedResult
from tests.api.robust_support import (
    API_TEST_DB,
    api_config,
    create_api_key,
    jpeg,
    own_bucket,
    running_app,
    valkey_client,
)


def png_bomb(width: int = 7000, height: int = 7000) -> bytes:
    """A complete PNG of width x height at deflate's best ratio: 7000x7000 is ~143 KB for 49 Mpx."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * ((1 + 3 * width) * height), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def lying_jpeg(width: int = 7000, height: int = 7000) -> bytes:
    """64x64 of JPEG data under a frame header that claims width x height."""
    data = bytearray(jpeg(seed=5, size=(64, 64)))
    frame = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb()


@pytest.fixture
def valkey(services: LocalServices) -> Iterator[redis.Redis]:
    client = valkey_client(services)
    yield client
    client.close()


def test_decode_slots_bound_running_checks_and_pixels() -> None:
    async def scenario() -> None:
        slots = DecodeSlots(most=2, pixels=1000, wait_seconds=0.05)
        async with slots.slot(900):
            async with slots.slot(100):  # fits beside it
                with pytest.raises(ApiError) as busy:  # a third: over the count
                    async with slots.slot(1):
                        pass
                assert busy.value.status == 503 and busy.value.code == "busy"
                assert busy.value.headers and int(busy.value.headers["Retry-After"]) >= 1
            with pytest.raises(ApiError):  # over the pixels
                async with slots.slot(101):
                    pass
            # A waiter gets the room as soon as it is freed.
            waiter = asyncio.create_task(_hold(slots, 500))
            await asyncio.sleep(0)
            assert not waiter.done()
        slots.wait_seconds = 5
        await waiter
        async with slots.slot(10_000):  # larger than the budget: runs, alone
            assert slots.running == 1
        assert slots.running == 0 and slots.pixels_in_flight == 0
        assert slots.peak_pixels_in_flight <= 10_000

    asyncio.run(scenario())


def test_decode_slots_admit_waiting_checks_in_arrival_order() -> None:
    """A check that finds others waiting queues behind them, even when room was freed in the same step: otherwise a
    waiting check is overtaken again and again by later ones under a burst (a p99 of seconds)."""

    async def scenario() -> list[str]:
        slots = DecodeSlots(most=1, pixels=1000, wait_seconds=5)
        order: list[str] = []

        async def check(name: str) -> None:
            async with slots.slot(1):
                order.append(name)

        async with slots.slot(1):
            waiting = asyncio.create_task(check("waiting"))
            await asyncio.sleep(0)
        # Room freed: a later check arriving now, before the waiting one has run again, queues behind it.
        await check("later")
        await waiting
        return order

    assert asyncio.run(scenario()) == ["waiting", "later"]


def test_a_check_that_gives_up_lets_those_behind_it_in() -> None:
    async def scenario() -> None:
        slots = DecodeSlots(most=2, pixels=1000, wait_seconds=0.05)
        async with slots.slot(600):
            with pytest.raises(ApiError):  # over the pixels: it waits, then gives up
                async with slots.slot(900):
                    pass
            slots.wait_seconds = 5
            async with slots.slot(100):  # fits beside the first: not stuck behind the one that left
                assert slots.running == 2
        assert slots.running == 0 and slots.pixels_in_flight == 0

    asyncio.run(scenario())


async def _hold(slots: DecodeSlots, cost: int) -> None:
    async with slots.slot(cost):
        pass


def test_the_lying_jpeg_is_refused_at_upload_and_nothing_is_stored(
    services: LocalServices, valkey: redis.Redis
) -> None:
    bucket = "fecapass-api-robust-limits"
    store = own_bucket(services, bucket)
    key = create_api_key(services, "read")

    async def scenario() -> httpx.Response:
        async with running_app(api_config(services, bucket=bucket)) as (_, client):
            return await client.post("/v1/detect", files={"file": ("x.jpg", lying_jpeg())}, headers={"X-API-Key": key})

    response = asyncio.run(scenario())
    assert response.status_code == 422 and response.json()["code"] == "undecodable_image", response.text
    assert "7000x7000" in response.json()["detail"]
    assert store.keys("") == [] and valkey.xlen("fecapass:detect") == 0


def test_decode_bombs_are_bounded_while_normal_uploads_succeed(
    services: LocalServices, valkey: redis.Redis, bomb: bytes
) -> None:
    budget = 50_000_000  # one 49 Mpx bomb at a time, with room for small photos beside it
    config = api_config(
        services, api={"max_decode_pixels_in_flight": budget, "max_concurrent_decodes": 4, "decode_wait_seconds": 60}
    )
    key = create_api_key(services, "read")

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response], int, httpx.Response, httpx.Response]:
        async with running_app(config) as (app, client):
            state: AppState = app.state.fecapass
            headers = {"X-API-Key": key}

            def upload(name: str, data: bytes) -> asyncio.Future[httpx.Response]:
                return asyncio.ensure_future(client.post("/v1/detect", files={"file": (name, data)}, headers=headers))

            bombs = [upload(f"bomb{i}.png", bomb) for i in range(4)]
            normal = [upload(f"photo{i}.jpg", jpeg(seed=i)) for i in range(4)]
            answers = await asyncio.gather(*bombs), await asyncio.gather(*normal)
            peak = state.decodes.peak_pixels_in_flight
            # With the budget taken (all but what a small photo needs), a bomb waits, then is told to retry.
            state.decodes.wait_seconds = 0.2
            async with state.decodes.slot(budget - 100_000):
                refused = await client.post("/v1/detect", files={"file": ("b.png", bomb)}, headers=headers)
                beside = await client.post("/v1/detect", files={"file": ("p.jpg", jpeg(seed=9))}, headers=headers)
            return answers[0], answers[1], peak, refused, beside

    bombs, normal, peak, refused, beside = asyncio.run(scenario())
    assert [r.status_code for r in normal] == [202] * 4, [r.text for r in normal]
    assert {r.status_code for r in bombs} <= {202, 503}, [r.text for r in bombs]
    assert peak <= budget  # never two bombs' pixels at once
    assert refused.status_code == 503 and refused.json()["code"] == "busy", refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert beside.status_code == 202, beside.text


def test_five_hundred_waiting_clients_are_served_or_told_to_retry(services: LocalServices, valkey: redis.Redis) -> None:
    """Far more waiting requests than Redis connections: they queue for one instead of failing. (The default
    pool refused past its connections: MaxConnectionsError, answered 500.)"""
    # A pool wait far longer than the queue needs: every request is served, none refused.
    config = api_config(services, redis={"redis_max_connections": 8, "redis_pool_timeout_seconds": 60})
    key = create_api_key(services, "read")
    headers = {"X-API-Key": key}

    async def scenario() -> tuple[Counter[int], Counter[str], set[str]]:
        async with running_app(config) as (_, client):
            jobs = []
            for seed in range(10):
                queued = await client.post("/v1/detect", files={"file": ("a.jpg", jpeg(seed))}, headers=headers)
                assert queued.status_code == 202, queued.text
                jobs.append(queued.json()["job_id"])
            finished = set(jobs[:5])

            async def finish_some() -> None:
                await asyncio.sleep(0.5)
                async with (
                    aioredis.Redis(
                        port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password
                    ) as direct,
                    direct.pipeline(transaction=True) as pipe,
                ):
                    # What the stage that finishes a job writes (common/runner.py's settle script): the final
                    # fields, a TTL, and the wake-up on the job-done channel.
                    _, fields = status.done(FinishedResult.without_photos(DetectResult(faces_seen=0, faces=[])))
                    for job_id in finished:
                        pipe.hset(job_key(job_id), mapping=dict(zip(fields[::2], fields[1::2], strict=True)))
                        pipe.expire(job_key(job_id), 600)
                        pipe.publish(JOB_DONE_CHANNEL, job_id)
                    await pipe.execute()

            waits = [
                client.get(f"/v1/jobs/{jobs[i % len(jobs)]}", params={"wait": 3}, headers=headers) for i in range(500)
            ]
            answers, _ = await asyncio.gather(asyncio.gather(*waits), finish_some())
            codes = Counter(r.status_code for r in answers)
            states = Counter(
                f"{r.json()['job_id'] in finished}:{r.json()['state']}" for r in answers if r.status_code == 200
            )
            woken = {r.json()["job_id"] for r in answers if r.status_code == 200 and r.json()["state"] == "done"}
            return codes, states, woken

    codes, states, woken = asyncio.run(scenario())
    assert set(codes) <= {200, 202, 503}, codes  # never a 500
    assert codes[200] == 500, codes  # and here, with a pool that queues, every one served
    # The finished jobs' waiters saw them finish; the others' were answered with their job still queued.
    assert states[f"False:{JobState.QUEUED.value}"] + states[f"True:{JobState.DONE.value}"] == codes[200], states
    assert len(woken) == 5
