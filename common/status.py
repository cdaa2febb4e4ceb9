"""Job status hashes in Redis. Functions queue commands on a pipeline (sync or asyncio) so that a status
change lands in the same MULTI/EXEC as the stream commands it belongs with."""

from __future__ import annotations

import time
from typing import Any

from schemas.jobs import JOB_DONE_CHANNEL, STAGE_STATE, ErrorCode, JobState, job_key
from schemas.results import FinishedResult
from schemas.streams import JobMessage, Stage


def now() -> str:
    return f"{time.time():.6f}"


def queue_job(pipe: Any, message: JobMessage, ttl_seconds: int) -> dict[str, str]:
    """Queue a new job: its status hash and its entry on the detect stream, on a MULTI ``pipe`` so that neither
    exists without the other. Returns what the hash will hold."""
    key = job_key(message.job_id)
    written = {"kind": message.kind.value, "image_key": message.image_key}
    if message.pack is not None:
        written["model_pack"] = message.pack
    if message.user_id is not None:
        written["user_id"] = str(message.user_id)
    written.update(state=JobState.QUEUED.value, created_at=now())
    pipe.hset(key, mapping=written)
    pipe.expire(key, ttl_seconds)
    pipe.xadd(Stage.DETECT.stream, message.to_fields())
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


def queue_done(pipe: Any, job_id: str, result: FinishedResult, ttl_seconds: int) -> None:
    """The result is stored as its model's JSON (``schemas.results.parse_stored_result`` reads it back)."""
    key = job_key(job_id)
    stored = result.stored.model_dump_json()
    pipe.hset(key, mapping={"state": JobState.DONE.value, "finished_at": now(), "result": stored})
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
