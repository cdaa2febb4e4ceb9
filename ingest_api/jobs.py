"""Submitting a job (object first, then the stream event) and reading it back from its status hash."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis.exceptions
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath

from common import status
from common.db.job_traces import queue_job_owner
from common.errors import TransientError
from common.imaging import ImageInfo
from common.objects import original_key
from ingest_api.deps import AppState
from ingest_api.problems import ApiError, unavailable
from schemas.api import Job, JobError
from schemas.jobs import JobState, job_key
from schemas.results import Presign, client_result, parse_stored_result
from schemas.streams import PIPELINE, JobKind, JobMessage
from schemas.text import decode_fields

# Failures that are the caller's photo or request, reported as 422 to a caller who waited.
CLIENT_ERROR_STATUS = {
    "no_face": 422,
    "undecodable_image": 422,
    "image_too_large": 422,
    "user_not_found": 404,
    "face_erased": 404,  # the user or face was erased while the enroll ran
    "user_has_no_faces": 422,
}


_JOB_ID_SLOT = "JOB-ID-SLOT"


def job_url(request: Request, job_id: str) -> str:
    # url_for searches every route on each call (~6 % of an upload's CPU): the path is looked up once.
    template: str | None = getattr(request.app.state, "job_path_template", None)
    if template is None:
        template = request.app.url_path_for("get_job", job_id=_JOB_ID_SLOT)
        request.app.state.job_path_template = template
    return str(URLPath(template.replace(_JOB_ID_SLOT, job_id)).make_absolute_url(request.app.state.public_url))


@dataclass(frozen=True)
class Submitted:
    job_id: str
    status: dict[str, str]  # the job's hash as written


async def submit(
    state: AppState, *, kind: JobKind, photos: list[tuple[bytes, ImageInfo]], extra: dict[str, Any]
) -> Submitted:
    """Store the photos, then enqueue the job."""
    try:
        full = await state.backlog.full()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise unavailable("Redis") from exc
    if full:
        raise ApiError(
            429, "backlog_full", "the service is behind on its work; retry later", headers={"Retry-After": "10"}
        )
    job_id = uuid.uuid4().hex
    keys = [original_key(job_id, source) for source in range(len(photos))]
    try:
        # The objects are durable before the event exists: no event ever points at nothing.
        for key, (data, info) in zip(keys, photos, strict=True):
            await run_in_threadpool(state.store.put, key, data, info.content_type)
    except TransientError as exc:
        raise unavailable("object storage") from exc
    second = keys[1] if len(keys) > 1 else None
    pack = await state.active_pack.name()
    message = JobMessage(job_id=job_id, kind=kind, image_key=keys[0], second_image_key=second, pack=pack, **extra)
    try:
        async with state.redis.pipeline(transaction=True) as pipe:
            written = status.queue_job(pipe, message, state.config.pipeline.job_ttl_seconds)
            if message.user_id is not None:  # erasing the user finds this job even before it has a face row
                queue_job_owner(pipe, message.user_id, job_id, state.config.pipeline.job_ttl_seconds)
            await pipe.execute()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise unavailable("Redis") from exc
    state.backlog.accepted()
    return Submitted(job_id, written)


def photo_urls(state: AppState) -> Presign:
    """Search matches store the photo's key; clients get a short-lived URL instead."""
    expires = timedelta(seconds=state.config.pipeline.presign_seconds)
    return lambda key: state.presigner.presigned_url(key, expires)


async def read_job(state: AppState, request: Request, job_id: str) -> Job | None:
    raw = decode_fields(await state.redis.hgetall(job_key(job_id)))
    return job_from_hash(raw, job_id, job_url(request, job_id), photo_urls(state))


def job_from_hash(raw: dict[str, str], job_id: str, status_url: str, presign: Presign) -> Job | None:
    if not raw or "kind" not in raw:
        return None
    stages: dict[str, dict[str, float]] = {}
    for stage in PIPELINE:
        times = {
            moment: float(raw[f"{stage.value}_{moment}"])
            for moment in ("started_at", "finished_at")
            if f"{stage.value}_{moment}" in raw
        }
        if times:
            stages[stage.value] = times
    created_at = float(raw["created_at"]) if "created_at" in raw else None
    finished_at = float(raw["finished_at"]) if "finished_at" in raw else None
    kind = JobKind(raw["kind"])
    result = client_result(parse_stored_result(kind, raw["result"]), presign) if "result" in raw else None
    return Job(
        job_id=job_id,
        kind=kind,
        state=JobState(raw["state"]),
        status_url=status_url,
        image_key=raw.get("image_key", ""),
        user_id=int(raw["user_id"]) if raw.get("user_id") else None,
        model_pack=raw.get("model_pack"),
        created_at=created_at,
        finished_at=finished_at,
        query_time_ms=round((finished_at - created_at) * 1000, 1) if created_at and finished_at else None,
        stages=stages,
        faces_seen=int(raw["faces_seen"]) if "faces_seen" in raw else None,
        error=JobError(code=raw["error_code"], message=raw.get("error_message", "")) if raw.get("error_code") else None,
        result=result,
    )


async def wait_for_job(state: AppState, request: Request, job_id: str, seconds: float) -> Job | None:
    seconds = min(seconds, state.config.pipeline.max_wait_seconds)
    async with state.waiter.watch(job_id) as finished:
        job = await read_job(state, request, job_id)
        if job is None or job.state.terminal or seconds <= 0:
            return job
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(finished), timeout=seconds)
    return await read_job(state, request, job_id)


async def respond(state: AppState, request: Request, submitted: Submitted, wait: float) -> JSONResponse:
    """202 while the job runs; 200 with the result if it finished within ``wait`` seconds."""
    job_id = submitted.job_id
    if wait > 0:
        job = await wait_for_job(state, request, job_id, wait)
    else:  # answered from what was just written: no read back
        job = job_from_hash(submitted.status, job_id, job_url(request, job_id), photo_urls(state))
    if job is None:  # expired between submit and read: only with a tiny TTL
        raise ApiError(404, "job_not_found", f"job {job_id} not found")
    if job.state is JobState.FAILED and job.error is not None and wait > 0:
        raise ApiError(CLIENT_ERROR_STATUS.get(job.error.code, 500), job.error.code, job.error.message, job_id=job_id)
    code = 200 if job.state.terminal else 202
    return JSONResponse(job.model_dump(mode="json"), status_code=code, headers={"Location": job.status_url})
