"""Idempotency-Key: a client that retries a request after a lost answer gets the first job or user back.

A key is scoped to the API key that sent it and remembered for FECAPASS_IDEMPOTENCY_TTL_SECONDS. It is bound to
a fingerprint of what the request asks for (route, parameters, a hash of each photo or the JSON body), so the
same key with a different request is refused with 422 ``idempotency_key_reused``.

Redis holds one record per key, claimed with SET NX: the first request writes a short-lived *pending* record,
and replaces it with the final one (the job id, or the user's answer) when it succeeds, or deletes it when it
fails, so that a retry is not refused. For a job the final record is written by the script that queues the job
(common/job_submit.py), which checks in the same step that the key still holds this request's pending record:
a job never exists without it. A duplicate that arrives while the first is pending waits (briefly) for the
outcome; a pending record whose request died expires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import redis.asyncio as aioredis
from fastapi import Depends, Header, Request
from pydantic import BaseModel

from common.apikeys import hash_key
from ingest_api.problems import ApiError

HEADER = "Idempotency-Key"
KEY_PREFIX = "fecapass:idempotency:"
# A pending record outlives any submit (S3 put, submit script) that is still going; a dead request's expires after it.
PENDING_SECONDS = 30
# A duplicate waits this long for the first request's outcome, then is told to retry (409).
DUPLICATE_WAIT_SECONDS = 10.0
POLL_SECONDS = 0.05

# Replace or delete the record only while it is still the one this request wrote.
_SWAP_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
    return 1
end
return 0
"""


@dataclass(frozen=True)
class IdempotencyKey:
    redis_key: str  # per API key and client key: fecapass:idempotency:<api key hash>:<client key hash>


async def idempotency_key(  # async: FastAPI runs a plain def dependency on a worker thread
    request: Request,
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="any unique string (e.g. a UUID): a retry with the same key and request returns the first"
            " job or user instead of making a second one (see README, Idempotency)",
        ),
    ] = None,
) -> IdempotencyKey | None:
    if key is None:
        return None
    api_key = hash_key(request.headers.get("X-API-Key", "")).hex()[:32]
    client_key = hashlib.sha256(key.encode()).hexdigest()[:32]
    return IdempotencyKey(f"{KEY_PREFIX}{api_key}:{client_key}")


Idempotency = Annotated[IdempotencyKey | None, Depends(idempotency_key)]


def fingerprint(route: str, parameters: dict[str, Any], blobs: Sequence[bytes] = ()) -> str:
    """What a request asks for. Photos count by their hash: a retry may frame its multipart body differently."""
    described = {
        "route": route,
        "parameters": parameters,
        "blobs": [hashlib.sha256(blob).hexdigest() for blob in blobs],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    """This request owns the key: it must ``complete`` or ``release`` it."""

    key: IdempotencyKey
    fingerprint: str
    pending: bytes  # the record as written, to recognise it as ours later

    def final(self, **record: Any) -> bytes:
        return json.dumps({"fingerprint": self.fingerprint, **record}).encode()


@dataclass(frozen=True)
class Replay:
    """An earlier request with this key and fingerprint succeeded: its record."""

    record: dict[str, Any]


async def begin(client: aioredis.Redis, key: IdempotencyKey, fingerprint: str) -> Claim | Replay:
    deadline = time.monotonic() + DUPLICATE_WAIT_SECONDS
    pending = json.dumps({"fingerprint": fingerprint, "pending": secrets.token_hex(8)}).encode()
    while True:
        if await client.set(key.redis_key, pending, nx=True, ex=PENDING_SECONDS):
            return Claim(key, fingerprint, pending)
        raw = await client.get(key.redis_key)
        if raw is not None:
            record = json.loads(raw)
            if record.get("fingerprint") != fingerprint:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    f"this {HEADER} was used for a different request; use a new key for a new request",
                )
            if "pending" not in record:
                return Replay(record)
        if time.monotonic() >= deadline:
            raise ApiError(
                409,
                "idempotency_key_in_progress",
                f"a request with this {HEADER} is still being processed; retry shortly",
                headers={"Retry-After": "1"},
            )
        await asyncio.sleep(POLL_SECONDS)  # raw None: released or expired in between; the next SET NX takes it


async def complete(client: aioredis.Redis, claim: Claim, final: bytes, ttl_seconds: int) -> None:
    await client.eval(_SWAP_IF_OURS, 1, claim.key.redis_key, claim.pending, final, ttl_seconds)


async def release(client: aioredis.Redis, claim: Claim) -> None:
    """Forget the claim of a request that failed, so its retry is processed, not refused."""
    await client.eval(_SWAP_IF_OURS, 1, claim.key.redis_key, claim.pending, "", 0)


async def release_quietly(client: aioredis.Redis, claim: Claim) -> None:
    """``release`` on a failure path: with Redis down, the pending record expires by itself."""
    with contextlib.suppress(Exception):  # the original error is what the client must see
        await asyncio.shield(release(client, claim))


M = TypeVar("M", bound=BaseModel)


async def once(
    client: aioredis.Redis,
    key: IdempotencyKey | None,
    fingerprint_of_request: str,
    model: type[M],
    produce: Callable[[], Awaitable[M]],
    ttl_seconds: int,
) -> M:
    """``produce()`` once per key: a retry gets the first answer's body back. For answers that are not jobs
    (a created user); a failure is not remembered, so the retry runs again."""
    if key is None:
        return await produce()
    started = await begin(client, key, fingerprint_of_request)
    if isinstance(started, Replay):
        return model.model_validate(started.record["body"])
    try:
        answer = await produce()
    except BaseException:
        await release_quietly(client, started)
        raise
    await complete(client, started, started.final(body=answer.model_dump(mode="json")), ttl_seconds)
    return answer
