from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from common.db.main_repository import DuplicateEmail, DuplicateExternalId, UnknownCollection, UserRow
from ingest_api import idempotency
from ingest_api.auth import READ, WRITE, Caller
from ingest_api.collection_access import collection_not_found
from ingest_api.deps import AppState, State
from ingest_api.idempotency import Idempotency
from ingest_api.openapi import problems
from ingest_api.problems import ApiError, user_not_found
from ingest_api.stores import call_store
from schemas.api import DEFAULT_COLLECTION, CollectionName, ExternalId, User, UserCreate, UserPage, UserUpdate

router = APIRouter(prefix="/v1/users", tags=["users"], dependencies=[READ])

CollectionQuery = Annotated[CollectionName, Query(description="the collection to list")]


def email_taken(email: object) -> ApiError:
    return ApiError(409, "email_taken", f"a user with email {email} exists in this collection")


def external_id_taken(external_id: object) -> ApiError:
    return ApiError(409, "external_id_taken", f"a user with external id {external_id} exists in this collection")


async def user_view(state: AppState, row: UserRow) -> User:
    return User(
        id=row.id,
        email=row.email,
        full_name=row.full_name,
        is_active=row.is_active,
        created_at=row.created_at,
        updated_at=row.updated_at,
        collection=await state.collections.name_of(row.collection_id),
        external_id=row.external_id,
    )


async def visible_user(state: AppState, caller: Caller, user_id: int) -> UserRow:
    """The user if the key may see their collection; else 404 user_not_found, as for a user who does not exist."""
    row = await call_store(state.main.get_user, user_id)
    if row is None or not caller.sees(row.collection_id):
        raise user_not_found(user_id)
    return row


@router.post("", status_code=201, response_model=User, dependencies=[WRITE], responses=problems(404, 409))
async def create_user(body: UserCreate, state: State, caller: Caller, key: Idempotency) -> User:
    collection = await state.collections.visible(caller, body.collection)

    async def create() -> User:
        try:
            row = await call_store(
                state.main.create_user, str(body.email), body.full_name, collection.id, body.external_id
            )
        except DuplicateEmail as exc:
            raise email_taken(body.email) from exc
        except DuplicateExternalId as exc:
            raise external_id_taken(body.external_id) from exc
        except UnknownCollection as exc:  # deleted since its row was cached
            state.collections.forget(collection)
            raise collection_not_found(body.collection) from exc
        return await user_view(state, row)

    request = idempotency.fingerprint("POST /v1/users", body.model_dump(mode="json"))
    return await idempotency.once(state.redis, key, request, User, create, state.config.api.idempotency_ttl_seconds)


@router.get("", response_model=UserPage, responses=problems(404))
async def list_users(
    state: State,
    caller: Caller,
    after: Annotated[int, Query(ge=0, description="the last id of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    q: Annotated[str, Query(max_length=200, pattern=r"^[^\x00]*$", description="name or email contains")] = "",
    collection: CollectionQuery = DEFAULT_COLLECTION,
    email: Annotated[
        str | None, Query(max_length=320, pattern=r"^[^\x00]*$", description="exactly this email (any case)")
    ] = None,
    external_id: Annotated[ExternalId | None, Query(description="exactly this external id")] = None,
) -> UserPage:
    """The people of one collection, in id order; ``email`` and ``external_id`` find one person exactly."""
    found = await state.collections.visible(caller, collection)
    rows = await call_store(
        state.main.list_users, after, limit, q, collection_id=found.id, email=email, external_id=external_id
    )
    return UserPage(
        items=[await user_view(state, row) for row in rows], next_after=rows[-1].id if len(rows) == limit else None
    )


@router.get("/{user_id}", response_model=User, responses=problems(404))
async def get_user(user_id: int, state: State, caller: Caller) -> User:
    return await user_view(state, await visible_user(state, caller, user_id))


@router.patch("/{user_id}", response_model=User, dependencies=[WRITE], responses=problems(404, 409))
async def update_user(user_id: int, body: UserUpdate, state: State, caller: Caller) -> User:
    await visible_user(state, caller, user_id)
    try:
        row = await call_store(
            state.main.update_user,
            user_id,
            email=str(body.email) if body.email else None,
            full_name=body.full_name,
            is_active=body.is_active,
            external_id=body.external_id,
            clear_external_id="external_id" in body.model_fields_set and body.external_id is None,
        )
    except DuplicateEmail as exc:
        raise email_taken(body.email) from exc
    except DuplicateExternalId as exc:
        raise external_id_taken(body.external_id) from exc
    if row is None:
        raise user_not_found(user_id)
    return await user_view(state, row)


@router.delete("/{user_id}", status_code=204, dependencies=[WRITE], responses=problems(404))
async def delete_user(user_id: int, state: State, caller: Caller) -> Response:
    """Erase the user and everything held about them: face rows, embeddings of every pack, photos and crops."""
    await visible_user(state, caller, user_id)
    if not await call_store(state.erasure.erase_user, user_id):
        raise user_not_found(user_id)
    return Response(status_code=204)
