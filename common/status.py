"""Job status hashes in Redis. Functions queue commands on a pipeline (sync or asyncio) so that a status
change lands in the same MULTI/EXEC as the stream commands it belongs with."""

from __future__ import annotations

import json
import time
from typing import Any

from schemas.jobs import JOB_DONE_CHANNEL, STAGE_STATE, ErrorCode, JobState, job_key
from schemas.streams import Stage


def now() -> str:
    return f"{time.time():.6f}"


def queue_created(pipe: Any, job_id: str, fields: dict[str, str], ttl_seconds: int) -> dict[str, str]:
    """Queue the new job's hash; returns what it will hold."""
    key = job_key(job_id)
    written = {**fields, "state": JobState.QUEUED.value, "created_at": now()}
    pipe.hset(key, mapping=written)
    pipe.expire(key, ttl_seconds)
    return written


def queue_stage_started(pipe: Any, job_id: str, stage: Stage, ttl_seconds: int) -> None:
    key = job_key(job_id)
    pipe.hset(key, mapping={"state": STAGE_STATE[stage].value, f"{stage.value}_started_at": now()})
    pipe.expire(key, ttl_seconds)


# Every write sets the TTL again: a job whose hash expired while it ran must not come back without one.


def queue_stage_finished(
    pipe: Any, job_id: str, stage: Stage, ttl_seconds: int, extra: dict[str, str] | None = None
) -> None:
    key = job_key(job_id)
    pipe.hset(key, mapping={f"{stage.value}_finished_at": now(), **(extra or {})})
    pipe.expire(key, ttl_seconds)


def queue_done(pipe: Any, job_id: str, result: dict[str, Any], ttl_seconds: int) -> None:
    key = job_key(job_id)
    pipe.hset(key, mapping={"state": JobState.DONE.value, "finished_at": now(), "result": json.dumps(result)})
    pipe.expire(key, ttl_seconds)
    pipe.publish(JOB_DONE_CHANNEL, job_id)


def queue_failed(pipe: Any, job_id: str, code: ErrorCode | str, message: str, ttl_seconds: int) -> None:
    key = job_key(job_id)
    pipe.hset(
        key,
        mapping={
            "state": JobState.FAILED.value,
            "finished_at": now(),
            "error_code": str(code),
            "error_message": message[:1000],
        },
    )
    pipe.expire(key, ttl_seconds)
    pipe.publish(JOB_DONE_CHANNEL, job_id)


def decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }
