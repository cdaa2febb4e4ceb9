"""Idempotency-Key: a retry after a lost answer gets the first job or user, counted in Redis, S3 and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis

from common.db.main_repository import MainRepository
from common.transient import photo_blob_key
from operations.services import MAIN_DB, LocalServices
from schemas.streams import Stage
from tests.api.robust_support import (
    TcpProxy,
    api_config,
    create_api_key,
    jpeg,
    own_bucket,
    running_app,
    valkey_client,
)


@pytest.fixture
def valkey(services: LocalServices) -> Iterator[redis.Redis]:
    client = valkey_client(services)
    yield client
    client.close()


def queued_jobs(valkey: redis.Redis) -> int:
    return int(valkey.xlen(Stage.DETECT.stream))


def job_hashes(valkey: redis.Redis) -> int:
    return len(list(valkey.scan_iter("fecapass:job:*")))


def search(client: httpx.AsyncClient, key: str, idempotency: str, photo: bytes, name: str = "a.jpg", **params: str):  # type: ignore[no-untyped-def]
    return client.post(
        "/v1/search",
        params=params,
        files={"file": (name, photo, "image/jpeg")},
        headers={"X-API-Key": key, "Idempotency-Key": idempotency},
    )


def test_a_retried_upload_gets_the_first_job_and_a_different_request_is_refused(
    services: LocalServices, valkey: redis.Redis
) -> None:
    bucket = "fecapass-api-robust-idempotency"
    store = own_bucket(services, bucket)
    key, other_key = create_api_key(services, "read"), create_api_key(services, "read")
    photo = jpeg(seed=11)

    async def scenario() -> list[httpx.Response]:
        async with running_app(api_config(services, bucket=bucket)) as (_, client):
            return [
                await search(client, key, "retry-1", photo),
                # The retry: another file name and multipart boundary, the same photo and parameters.
                await search(client, key, "retry-1", photo, name="renamed.jpg"),
                await search(client, key, "retry-1", jpeg(seed=12)),  # another photo
                await search(client, key, "retry-1", photo, limit="3"),  # other parameters
                await search(client, other_key, "retry-1", photo),  # another API key: its own keys
                await search(client, key, "retry-2", photo),  # a new key: a new job
            ]

    first, retry, other_photo, other_params, other_api_key, new_key = asyncio.run(scenario())
    assert first.status_code == 202, first.text
    assert retry.status_code == 202 and retry.json()["job_id"] == first.json()["job_id"], retry.text
    for refused in (other_photo, other_params):
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "idempotency_key_reused"
    job_ids = {first.json()["job_id"], other_api_key.json()["job_id"], new_key.json()["job_id"]}
    assert len(job_ids) == 3
    # Counted where they live: three jobs queued, three hashes, three photos (a search's photo is held in Valkey).
    assert queued_jobs(valkey) == 3 and job_hashes(valkey) == 3
    assert sorted(k.decode() for k in valkey.scan_iter("fecapass:blob:*")) == sorted(map(photo_blob_key, job_ids))
    assert store.keys("originals/") == []


def test_concurrent_duplicates_resolve_to_one_job(services: LocalServices, valkey: redis.Redis) -> None:
    key = create_api_key(services, "read")
    photo = jpeg(seed=21)

    async def scenario() -> list[httpx.Response]:
        async with running_app(api_config(services)) as (_, client):
            return list(await asyncio.gather(*(search(client, key, "burst", photo) for _ in range(12))))

    answers = asyncio.run(scenario())
    assert {response.status_code for response in answers} == {202}, [r.text for r in answers]
    assert len({response.json()["job_id"] for response in answers}) == 1
    assert queued_jobs(valkey) == 1 and job_hashes(valkey) == 1


def test_a_failed_upload_forgets_its_key_so_the_retry_is_processed(
    services: LocalServices, valkey: redis.Redis
) -> None:
    s3 = TcpProxy(services.s3_port)
    key = create_api_key(services, "write")
    photo = jpeg(seed=31)
    user = MainRepository.at(services.dsn(MAIN_DB)).create_user(f"{uuid.uuid4().hex}@example.com", "Retried Enroll")
    assert user is not None

    def enroll(client: httpx.AsyncClient):  # type: ignore[no-untyped-def]
        # An enroll's photo goes to S3 (a search's to Valkey, which S3 being down does not stop).
        files = {"file": ("a.jpg", photo, "image/jpeg")}
        headers = {"X-API-Key": key, "Idempotency-Key": "after-outage"}
        return client.post(f"/v1/users/{user.id}/faces", files=files, headers=headers)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with running_app(api_config(services, s3_port=s3.port)) as (_, client):
            s3.cut()
            try:
                failed = await enroll(client)
            finally:
                s3.restore()
            retried = await enroll(client)
            again = await enroll(client)
            return failed, retried, again

    try:
        failed, retried, again = asyncio.run(scenario())
    finally:
        s3.close()
    assert failed.status_code == 503, failed.text
    assert retried.status_code == 202, retried.text
    assert again.json()["job_id"] == retried.json()["job_id"]
    assert queued_jobs(valkey) == 1


def test_user_creation_with_a_key_creates_one_user(services: LocalServices, valkey: redis.Redis) -> None:
    key = create_api_key(services, "write")
    email = f"{uuid.uuid4().hex}@example.com"

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with running_app(api_config(services)) as (_, client):
            headers = {"X-API-Key": key, "Idempotency-Key": f"user-{email}"}
            body = {"email": email, "full_name": "Ada"}
            burst = await asyncio.gather(*(client.post("/v1/users", json=body, headers=headers) for _ in range(6)))
            changed = await client.post("/v1/users", json={**body, "full_name": "Eve"}, headers=headers)
            return list(burst), changed

    burst, changed = asyncio.run(scenario())
    assert {response.status_code for response in burst} == {201}, [r.text for r in burst]
    assert len({response.text for response in burst}) == 1  # the same body, byte for byte
    assert changed.status_code == 422 and changed.json()["code"] == "idempotency_key_reused"
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        row = conn.execute("SELECT count(*) FROM users WHERE email = %s", (email,)).fetchone()
    assert row is not None and row[0] == 1


@pytest.mark.parametrize("bad", ["", "x" * 256, "has space", "ünï"])
def test_malformed_keys_are_refused(services: LocalServices, valkey: redis.Redis, bad: str) -> None:
    key = create_api_key(services, "read")

    async def scenario() -> httpx.Response:
        async with running_app(api_config(services)) as (_, client):
            return await client.post(
                "/v1/detect",
                files={"file": ("a.jpg", jpeg(seed=41))},
                headers={"X-API-Key": key.encode(), "Idempotency-Key": bad.encode("utf-8")},
            )

    response = asyncio.run(scenario())
    assert response.status_code == 422 and response.json()["code"] == "invalid_request", response.text
    assert queued_jobs(valkey) == 0
