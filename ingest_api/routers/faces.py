"""A user's enrolled faces: list, read, erase. Photo URLs are presigned and short-lived."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from common.errors import TransientError
from indexer.main_repository import FaceRow
from ingest_api.auth import READ, WRITE
from ingest_api.deps import AppState, State
from ingest_api.problems import ApiError, unavailable
from schemas.api import Face, Problem

router = APIRouter(prefix="/v1", tags=["faces"])
ERRORS: dict[int | str, dict[str, object]] = {code: {"model": Problem} for code in (401, 403, 404, 503)}


def face_view(state: AppState, row: FaceRow) -> Face:
    expires = timedelta(seconds=state.config.pipeline.presign_seconds)
    return Face(
        id=row.id,
        user_id=row.user_id,
        box=list(row.box),
        det_score=row.det_score,
        faces_seen=row.faces_seen,
        model_pack=row.model_pack,
        created_at=row.created_at,
        photo_url=state.presigner.presigned_url(row.image_key, expires),
        crop_url=state.presigner.presigned_url(row.crop_key, expires),
    )


@router.get("/users/{user_id}/faces", response_model=list[Face], dependencies=[READ], responses=ERRORS)
async def list_faces(user_id: int, state: State) -> list[Face]:
    try:
        user = await run_in_threadpool(state.main.get_user, user_id)
        rows = await run_in_threadpool(state.main.list_faces, user_id)
    except psycopg.OperationalError as exc:
        raise unavailable("the main database") from exc
    if user is None:
        raise ApiError(404, "user_not_found", f"user {user_id} not found")
    return [face_view(state, row) for row in rows]


@router.get("/faces/{face_id}", response_model=Face, dependencies=[READ], responses=ERRORS)
async def get_face(face_id: int, state: State) -> Face:
    try:
        row = await run_in_threadpool(state.main.get_face, face_id)
    except psycopg.OperationalError as exc:
        raise unavailable("the main database") from exc
    if row is None:
        raise ApiError(404, "face_not_found", f"face {face_id} not found")
    return face_view(state, row)


@router.delete("/faces/{face_id}", status_code=204, dependencies=[WRITE], responses=ERRORS)
async def delete_face(face_id: int, state: State) -> Response:
    """Erase one face: its row, its embeddings in every pack, its photo and crop."""
    try:
        erased = await run_in_threadpool(state.erasure.erase_face, face_id)
    except (psycopg.OperationalError, TransientError) as exc:
        raise unavailable("a database or object storage") from exc
    if not erased:
        raise ApiError(404, "face_not_found", f"face {face_id} not found")
    return Response(status_code=204)
