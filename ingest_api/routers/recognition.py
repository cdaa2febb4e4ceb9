"""Enroll a face for a user and search by photo. Both answer 202 with a job; ``wait`` returns the result."""

from __future__ import annotations

from typing import Annotated

import psycopg
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ingest_api import jobs
from ingest_api.deps import State
from ingest_api.problems import ApiError, unavailable
from ingest_api.uploads import read_photo
from schemas.api import Job, Problem
from schemas.streams import JobKind

router = APIRouter(prefix="/v1", tags=["recognition"])

WaitSeconds = Annotated[
    float,
    Query(
        ge=0,
        le=300,
        description="seconds to wait for the result (capped by FECAPASS_MAX_WAIT_SECONDS); 0 = answer at once",
    ),
]
Photo = Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or GIF photo")]

ERRORS: dict[int | str, dict[str, object]] = {code: {"model": Problem} for code in (404, 413, 415, 422, 503)}


@router.post("/users/{user_id}/faces", status_code=202, response_model=Job, responses={200: {"model": Job}, **ERRORS})
async def enroll_face(user_id: int, file: Photo, request: Request, state: State, wait: WaitSeconds = 0) -> JSONResponse:
    """Enroll the largest face of the photo for the user."""
    try:
        user = await run_in_threadpool(state.main.get_user, user_id)
    except psycopg.OperationalError as exc:
        raise unavailable("the main database") from exc
    if user is None or not user.is_active:
        raise ApiError(404, "user_not_found", f"user {user_id} not found")
    cfg = state.config.pipeline
    photo, info = await read_photo(file, cfg.max_upload_bytes, cfg.max_image_pixels)
    message = await jobs.submit(state, kind=JobKind.ENROLL, photo=photo, info=info, extra={"user_id": user_id})
    return await jobs.respond(state, request, message.job_id, wait)


@router.post("/search", status_code=202, response_model=Job, responses={200: {"model": Job}, **ERRORS})
async def search_faces(
    file: Photo,
    request: Request,
    state: State,
    threshold: Annotated[
        float | None,
        Query(ge=-1, le=1, description="minimum cosine similarity; default FECAPASS_SIMILARITY_THRESHOLD"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="most people returned per face")] = 10,
    wait: WaitSeconds = 0,
) -> JSONResponse:
    """Who is in this photo? Every face found gets its own list of matches."""
    cfg = state.config.pipeline
    photo, info = await read_photo(file, cfg.max_upload_bytes, cfg.max_image_pixels)
    extra = {"threshold": cfg.similarity_threshold if threshold is None else threshold, "limit": limit}
    message = await jobs.submit(state, kind=JobKind.SEARCH, photo=photo, info=info, extra=extra)
    return await jobs.respond(state, request, message.job_id, wait)
