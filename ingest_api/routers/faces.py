"""A user's enrolled faces: list, read, erase. Photo URLs are presigned and short-lived."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response

from common.db.main_repository import FaceRow
from ingest_api.auth import READ, WRITE
from ingest_api.deps import AppState, State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError, user_not_found
from ingest_api.stores import call_store
from schemas.api import Face

router = APIRouter(prefix="/v1", tags=["faces"], dependencies=[READ])


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


@router.get("/users/{user_id}/faces", response_model=list[Face], responses=problems(404))
async def list_faces(user_id: int, state: State) -> list[Face]:
    user = await call_store(state.main.get_user, user_id)
    rows = await call_store(state.main.list_faces, user_id)
    if user is None:
        raise user_not_found(user_id)
    return [face_view(state, row) for row in rows]


@router.get("/faces/{face_id}", response_model=Face, responses=problems(404))
async def get_face(face_id: int, state: State) -> Face:
    row = await call_store(state.main.get_face, face_id)
    if row is None:
        raise ApiError(404, "face_not_found", f"face {face_id} not found")
    return face_view(state, row)


@router.delete("/faces/{face_id}", status_code=204, dependencies=[WRITE], responses=problems(404))
async def delete_face(face_id: int, state: State) -> Response:
    """Erase one face: its row, its embeddings in every pack, its photo and crop."""
    if not await call_store(state.erasure.erase_face, face_id):
        raise ApiError(404, "face_not_found", f"face {face_id} not found")
    return Response(status_code=204)
