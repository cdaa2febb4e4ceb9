"""A user's enrolled faces: list, read, erase. Photo URLs are presigned and short-lived."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response

from common.db.main_repository import FaceRow
from ingest_api.auth import READ, WRITE, Caller
from ingest_api.deps import AppState, State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError
from ingest_api.routers.users import visible_user
from ingest_api.stores import call_store
from schemas.api import Face

router = APIRouter(prefix="/v1", tags=["faces"], dependencies=[READ])


def face_not_found(face_id: int) -> ApiError:
    return ApiError(404, "face_not_found", f"face {face_id} not found")


async def face_view(state: AppState, row: FaceRow) -> Face:
    expires = timedelta(seconds=state.config.pipeline.presign_seconds)
    return Face(
        id=row.id,
        user_id=row.user_id,
        collection=await state.collections.name_of(row.collection_id),
        external_id=row.external_id,
        box=list(row.box),
        det_score=row.det_score,
        faces_seen=row.faces_seen,
        model_pack=row.model_pack,
        created_at=row.created_at,
        photo_url=state.presigner.presigned_url(row.image_key, expires),
        crop_url=state.presigner.presigned_url(row.crop_key, expires),
    )


@router.get("/users/{user_id}/faces", response_model=list[Face], responses=problems(404))
async def list_faces(user_id: int, state: State, caller: Caller) -> list[Face]:
    await visible_user(state, caller, user_id)
    rows = await call_store(state.main.list_faces, user_id)
    return [await face_view(state, row) for row in rows]


async def visible_face(state: AppState, caller: Caller, face_id: int) -> FaceRow:
    """The served face if the key may see its collection; else 404 face_not_found, as for a missing face."""
    row = await call_store(state.main.get_face, face_id)
    if row is None or not caller.sees(row.collection_id):
        raise face_not_found(face_id)
    return row


@router.get("/faces/{face_id}", response_model=Face, responses=problems(404))
async def get_face(face_id: int, state: State, caller: Caller) -> Face:
    return await face_view(state, await visible_face(state, caller, face_id))


@router.delete("/faces/{face_id}", status_code=204, dependencies=[WRITE], responses=problems(404))
async def delete_face(face_id: int, state: State, caller: Caller) -> Response:
    """Erase one face: its row, its embeddings in every pack, its photo and crop."""
    collection_id = await call_store(state.main.face_collection, face_id)
    if collection_id is None or not caller.sees(collection_id):
        raise face_not_found(face_id)
    if not await call_store(state.erasure.erase_face, face_id):
        raise face_not_found(face_id)
    return Response(status_code=204)
