from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from common.db.main_repository import CollectionMismatch, DuplicateEmail, UnknownUser
from ingest_api import idempotency
from ingest_api.auth import READ, WRITE
from ingest_api.deps import State
from ingest_api.idempotency import Idempotency
from ingest_api.openapi import problems
from ingest_api.problems import ApiError, collection_mismatch, user_not_found
from ingest_api.stores import call_store
from schemas.api import RowId, User, UserCreate, UserMerge, UserPage, UserUpdate

router = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[READ])


@router.post("", status_code=201, response_model=User, dependencies=[WRITE], responses=problems(409))
async def create_user(body: UserCreate, state: State, key: Idempotency) -> User:
    async def create() -> User:
        try:
            row = await call_store(state.main.create_user, str(body.email), body.full_name)
        except DuplicateEmail as exc:
            raise ApiError(409, "email_taken", f"a user with email {body.email} exists") from exc
        return User(**row.__dict__)

    request = idempotency.fingerprint("POST /v1/users", body.model_dump(mode="json"))
    return await idempotency.once(state.redis, key, request, User, create, state.config.api.idempotency_ttl_seconds)


@router.get("", response_model=UserPage)
async def list_users(
    state: State,
    after: Annotated[int, Query(ge=0, description="the last id of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    q: Annotated[str, Query(max_length=200, pattern=r"^[^\x00]*$", description="name or email contains")] = "",
) -> UserPage:
    rows = await call_store(state.main.list_users, after, limit, q)
    return UserPage(
        items=[User(**row.__dict__) for row in rows], next_after=rows[-1].id if len(rows) == limit else None
    )


@router.get("/{user_id}", response_model=User, responses=problems(404))
async def get_user(user_id: int, state: State) -> User:
    row = await call_store(state.main.get_user, user_id)
    if row is None:
        raise user_not_found(user_id)
    return User(**row.__dict__)


@router.patch("/{user_id}", response_model=User, dependencies=[WRITE], responses=problems(404, 409))
async def update_user(user_id: int, body: UserUpdate, state: State) -> User:
    try:
        row = await call_store(
            state.main.update_user,
            user_id,
            email=str(body.email) if body.email else None,
            full_name=body.full_name,
            is_active=body.is_active,
        )
    except DuplicateEmail as exc:
        raise ApiError(409, "email_taken", f"a user with email {body.email} exists") from exc
    if row is None:
        raise user_not_found(user_id)
    return User(**row.__dict__)


@router.delete("/{user_id}", status_code=204, dependencies=[WRITE], responses=problems(404))
async def delete_user(user_id: int, state: State) -> Response:
    """Erase the user and everything held about them: face rows, embeddings of every pack, photos and crops."""
    if not await call_store(state.erasure.erase_user, user_id):
        raise user_not_found(user_id)
    return Response(status_code=204)


@router.post("/{user_id}/merge", response_model=User, dependencies=[WRITE], responses=problems(404, 409, 422))
async def merge_user(user_id: Annotated[RowId, Path()], body: UserMerge, state: State) -> User:
    """Merge user `from_user_id` into this one: every face of theirs moves here (ids, embeddings, photos kept), then
    they are erased. One transaction; repeating a merge that was done answers with this user and changes nothing."""
    if body.from_user_id == user_id:
        raise ApiError(422, "merge_into_itself", f"user {user_id} cannot be merged into itself")
    try:
        merge = await call_store(state.corrections.merge, user_id, body.from_user_id)
    except UnknownUser as exc:
        raise user_not_found(int(exc.args[0])) from exc
    except CollectionMismatch as exc:
        raise collection_mismatch(str(exc)) from exc
    return User(**merge.into.__dict__)
