"""Submitting a job (object first, then the stream event) and reading it back from its status hash."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis.exceptions
import structlog
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URLPath

from common import status
from common.db.job_traces import queue_job_owner
from common.imaging import ImageInfo
from common.job_submit import ClaimCheck, Queued, Writes
from common.objects import original_key
from common.transient import TRANSIENT_PHOTO_KINDS, is_transient, photo_blob_key
from ingest_api import idempotency as idempotency_records
from ingest_api.deps import AppState
from ingest_api.idempotency import IdempotencyKey
from ingest_api.problems import ApiError
from schemas.api import Job, JobError
from schemas.jobs import JobState, job_key
from schemas.results import Presign, client_result, parse_stored_result
from schemas.streams import PIPELINE, JobKind, JobMessage
from schemas.text import decode_fields

log = structlog.get_logger(__name__)

# Failures that are the caller's photo or request, reported as 422 to a caller who waited.
CLIENT_ERROR_STATUS = {
    "no_face": 422,
    "undecodable_image": 422,
    "image_too_large": 422,
    "user_not_found": 404,
    "face_erased": 404,  # the user or face was erased while the enroll ran
    "user_has_no_faces": 422,
    "face_external_id_taken": 409,  # another enroll of the same external id got there first
    "photo_expired": 503,  # the service was too slow for its own TTL: the same photo again may succeed
}


_JOB_ID_SLOT = "JOB-ID-SLOT"
# Photos up to this size are hashed for their idempotency fingerprint on the event loop (SHA-256 of 512 KB: ~0.3 ms):
# the hop to a worker thread and back costs more CPU than hashing a typical photo.
INLINE_HASH_BYTES = 512 * 1024
# Transient bytes go as their jobs finish, within seconds of a burst.
TRANSIENT_FULL_RETRY_AFTER_SECONDS = 2


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
    state: AppState,
    *,
    kind: JobKind,
    photos: list[tuple[bytes, ImageInfo]],
    extra: dict[str, Any],
    idempotency: IdempotencyKey | None = None,
    job_id: str | None = None,
) -> Submitted:
    """Store the photos, then enqueue the job (``job_id``, else a new id); with an Idempotency-Key, a repeat gets
    the first job back.

    A store that is down raises through (503, ingest_api/problems.py). Whatever fails after the first photo is
    stored deletes the photos again unless the job was queued after all; what a crash leaves behind, the orphan
    sweep (ingest_api/sweeper.py) deletes."""
    claim: idempotency_records.Claim | None = None
    if idempotency is not None:
        blobs = [data for data, _ in photos]
        if sum(map(len, blobs)) <= INLINE_HASH_BYTES:
            digest = idempotency_records.fingerprint(kind.value, extra, blobs)
        else:  # hashing 10 MB of photo takes tens of milliseconds: not on the event loop
            digest = await run_in_threadpool(idempotency_records.fingerprint, kind.value, extra, blobs)
        started = await idempotency_records.begin(state.redis, idempotency, digest)
        if isinstance(started, idempotency_records.Replay):
            job_id = str(started.record["job_id"])
            return Submitted(job_id, decode_fields(await state.redis.hgetall(job_key(job_id))))
        claim = started
    try:
        return await _store_and_queue(state, kind, photos, extra, claim, job_id or new_job_id())
    except BaseException:
        if claim is not None:
            await idempotency_records.release_quietly(state.redis, claim)
        raise


async def _store_and_queue(
    state: AppState,
    kind: JobKind,
    photos: list[tuple[bytes, ImageInfo]],
    extra: dict[str, Any],
    claim: idempotency_records.Claim | None,
    job_id: str,
) -> Submitted:
    if await state.backlog.full():
        raise ApiError(
            429, "backlog_full", "the service is behind on its work; retry later", headers={"Retry-After": "10"}
        )
    # A search, verify or detect photo is read once or twice and deleted within seconds: Redis, not S3.
    transient = kind in TRANSIENT_PHOTO_KINDS
    keys = [(photo_blob_key if transient else original_key)(job_id, source) for source in range(len(photos))]
    # An enroll's photo is kept: S3 only. The detect stage reads it from there, so an original that vanishes or
    # is overwritten before it ran fails the job instead of leaving a face whose photo is not the one enrolled.
    blobs = list(zip(keys, [data for data, _ in photos], strict=True)) if transient else []
    stored: list[str] = []
    sent = False  # whether the submit script went to Redis: only then can the job exist despite an error
    try:
        if not transient:  # kept: S3, before the event exists
            for key, (data, info) in zip(keys, photos, strict=True):
                stored.append(key)  # before the put: a put that fails half-way may still have written it
                await run_in_threadpool(state.store.put, key, data, info.content_type)
        second = keys[1] if len(keys) > 1 else None
        pack = await state.active_pack.name()
        message = JobMessage(job_id=job_id, kind=kind, image_key=keys[0], second_image_key=second, pack=pack, **extra)
        ttl = state.config.pipeline.job_ttl_seconds
        writes = Writes()  # what the MULTI held; the script makes them after its checks (common/job_submit.py)
        written = status.queue_job(writes, message, ttl)
        if message.user_id is not None:  # erasing the user finds this job even before it has a face row
            queue_job_owner(writes, message.user_id, job_id, ttl)
        check = None
        if claim is not None:
            # Queued only while the key is still this request's (a pending claim that outlived its expiry may
            # have been taken by a retry, which then owns the job).
            writes.set(claim.key.redis_key, claim.final(job_id=job_id), ex=state.config.api.idempotency_ttl_seconds)
            check = ClaimCheck(claim.key.redis_key, claim.pending)
        stored += [key for key, _ in blobs]  # before the script: its answer may be lost after it stored them
        sent = True
        outcome = await state.submitter.queue(blobs, writes, check)
        if outcome is not Queued.QUEUED:  # refused: the script stored and wrote nothing
            sent = False
            stored = [key for key in stored if not is_transient(key)]
            raise transient_bytes_full() if outcome is Queued.CAP_FULL else idempotency_lost()
    except BaseException as error:
        if stored:
            await _discard_unqueued(state, job_id, stored, error if sent else None)
        raise
    state.backlog.accepted()
    return Submitted(job_id, written)


def transient_bytes_full() -> ApiError:
    return ApiError(
        429,
        "backlog_full",
        "the service holds as many photos in flight as it may (FECAPASS_TRANSIENT_MAX_BYTES); retry shortly",
        headers={"Retry-After": str(TRANSIENT_FULL_RETRY_AFTER_SECONDS)},
    )


def idempotency_lost() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_progress",
        "another request with this Idempotency-Key took it over; retry to get its job",
        headers={"Retry-After": "1"},
    )


async def _discard_unqueued(state: AppState, job_id: str, keys: list[str], script_error: BaseException | None) -> None:
    """Delete the photos of a submit that failed after storing them, unless its job may exist after all.

    ``script_error``: the error of a submit script that was sent, None when the submit failed before it. A script
    whose answer was lost may have run: Redis answering that the job's hash is absent settles it, and so does an
    error that sent nothing (no connection could be made). Otherwise, or if S3 is down too, the orphan sweep
    deletes the photos later (and a blob's TTL its blobs)."""
    queued = False
    # Only the script stores blobs: a script that never left this process stored none.
    blobs_sent = script_error is not None and not _nothing_sent(script_error)
    try:
        if script_error is not None:
            try:
                queued = bool(await asyncio.shield(state.redis.exists(job_key(job_id))))
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if blobs_sent:
                    raise
        if not queued:
            originals = [key for key in keys if not is_transient(key)]
            if originals:
                await asyncio.shield(run_in_threadpool(state.store.delete_many, originals))
            if blobs_sent:
                await asyncio.shield(state.transient.delete([key for key in keys if is_transient(key)]))
    except Exception as exc:  # the submit's own error is what the client must see
        log.warning("api.orphan_left", job_id=job_id, keys=keys, error=repr(exc), cause=repr(script_error))
    else:
        log.info("api.orphan_deleted" if not queued else "api.queued_despite_error", job_id=job_id, keys=keys)


# redis-py's messages for a command that never left the client: the connection could not be made, or the
# blocking pool had none free.
_NOT_SENT_MARKERS = ("connecting to", "Timeout connecting", "No connection available")


def _nothing_sent(error: BaseException) -> bool:
    return isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError) and any(
        marker in str(error) for marker in _NOT_SENT_MARKERS
    )


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


def new_job_id() -> str:
    return uuid.uuid4().hex


async def wait_for_job(state: AppState, request: Request, job_id: str, seconds: float) -> Job | None:
    async with state.waiter.watch(job_id) as finished:
        job = await read_job(state, request, job_id)
        if job is None or job.state.terminal or seconds <= 0:
            return job
        return await _read_when_finished(state, request, job_id, finished, seconds)


async def _read_when_finished(
    state: AppState, request: Request, job_id: str, finished: asyncio.Future[None], seconds: float
) -> Job | None:
    """The job once ``finished`` (its watch) fires or ``seconds`` (capped by FECAPASS_MAX_WAIT_SECONDS) pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(finished), timeout=min(seconds, state.config.pipeline.max_wait_seconds))
    return await read_job(state, request, job_id)


async def submit_and_respond(
    state: AppState,
    request: Request,
    wait: float,
    *,
    kind: JobKind,
    photos: list[tuple[bytes, ImageInfo]],
    extra: dict[str, Any],
    idempotency: IdempotencyKey | None = None,
) -> JSONResponse:
    """``submit``, then ``respond``. A caller who waits watches its job from before the job is queued: however
    soon it finishes, the watch fires, and the job's hash is read once, when it is done (a watch begun after the
    submit would need a read first, for a finish in between)."""
    job_id = new_job_id()
    if wait <= 0:
        submitted = await submit(state, kind=kind, photos=photos, extra=extra, idempotency=idempotency, job_id=job_id)
        return await respond(state, request, submitted, wait)
    async with state.waiter.watch(job_id) as finished:
        submitted = await submit(state, kind=kind, photos=photos, extra=extra, idempotency=idempotency, job_id=job_id)
        # A repeat of an Idempotency-Key gets another job, not watched from before it was queued.
        return await respond(state, request, submitted, wait, finished if submitted.job_id == job_id else None)


async def respond(
    state: AppState, request: Request, submitted: Submitted, wait: float, watched: asyncio.Future[None] | None = None
) -> JSONResponse:
    """202 while the job runs; 200 with the result if it finished within ``wait`` seconds. ``watched``: the job's
    watch, begun before the job was queued."""
    job_id = submitted.job_id
    if wait > 0 and watched is not None:
        job = await _read_when_finished(state, request, job_id, watched, wait)
    elif wait > 0:
        job = await wait_for_job(state, request, job_id, wait)
    else:  # answered from what was just written: no read back
        job = job_from_hash(submitted.status, job_id, job_url(request, job_id), photo_urls(state))
    if job is None:  # expired between submit and read: only with a tiny TTL
        raise ApiError(404, "job_not_found", f"job {job_id} not found")
    if job.state is JobState.FAILED and job.error is not None and wait > 0:
        raise ApiError(CLIENT_ERROR_STATUS.get(job.error.code, 500), job.error.code, job.error.message, job_id=job_id)
    code = 200 if job.state.terminal else 202
    return ModelJSONResponse(job, status_code=code, headers={"Location": job.status_url})


class ModelJSONResponse(JSONResponse):
    """A model's JSON by pydantic's own serializer: half the CPU of ``model_dump`` and then ``json.dumps``."""

    def render(self, content: Any) -> bytes:
        return content.model_dump_json().encode() if isinstance(content, BaseModel) else super().render(content)
