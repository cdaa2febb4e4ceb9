"""What the calling key may do, and API keys for admin keys: list, create (the key is shown once), revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response

from common.apikeys import Scope
from common.db.main_repository import ApiKeyRow, KeyGrant
from ingest_api.auth import ADMIN, READ, Caller
from ingest_api.deps import AppState, State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError
from ingest_api.stores import call_store
from schemas.console import ApiKey, ApiKeyCreate, ApiKeyCreated, Me

router = APIRouter(prefix="/v1", tags=["keys"], dependencies=[READ])


async def _names(state: AppState, collection_ids: frozenset[int] | list[int] | None) -> list[str] | None:
    if collection_ids is None:
        return None
    return [await state.collections.name_of(i) for i in sorted(collection_ids)]


@router.get("/me", response_model=Me)
async def who_am_i(state: State, caller: Caller, scope: Scope = READ) -> Me:
    """The scope and collections of the key sent, so a client (the console) offers only what it may do."""
    return Me(scope=scope.value, collections=await _names(state, caller.collection_ids))


async def _view(state: AppState, row: ApiKeyRow) -> ApiKey:
    fields = {**row.__dict__, "collections": await _names(state, row.collection_ids)}
    del fields["collection_ids"]
    return ApiKey(**fields)


def _within(caller: KeyGrant, row: ApiKeyRow) -> bool:
    """Whether an admin key limited to collections manages this key: one limited to some of its own collections."""
    if caller.collection_ids is None:
        return True
    return row.collection_ids is not None and set(row.collection_ids) <= caller.collection_ids


@router.get("/keys", response_model=list[ApiKey], dependencies=[ADMIN])
async def list_keys(state: State, caller: Caller) -> list[ApiKey]:
    rows = await call_store(state.main.list_api_keys)
    return [await _view(state, row) for row in rows if _within(caller, row)]


@router.post("/keys", status_code=201, response_model=ApiKeyCreated, dependencies=[ADMIN], responses=problems(404))
async def create_key(body: ApiKeyCreate, state: State, caller: Caller) -> ApiKeyCreated:
    """A new key; it is in this answer only (only its SHA-256 is stored). ``collections`` limits it to those
    collections; an admin key limited to collections makes keys limited to some of its own only."""
    if body.collections is None and caller.collection_ids is not None:
        raise ApiError(403, "insufficient_scope", "a key limited to collections can only make keys limited to them")
    ids = None if body.collections is None else await state.collections.visible_ids(caller, body.collections)
    created = await call_store(state.main.create_api_key, body.name, body.scope, ids)
    view = await _view(state, created.row)
    return ApiKeyCreated(**view.model_dump(), key=created.key)


@router.delete("/keys/{key_id}", status_code=204, dependencies=[ADMIN], responses=problems(404))
async def revoke_key(key_id: int, state: State, caller: Caller) -> Response:
    """Revoke a key: refused on every API process within 30 s (their key caches)."""
    not_found = ApiError(404, "key_not_found", f"no active key with id {key_id}")
    if caller.collection_ids is not None:
        rows = await call_store(state.main.list_api_keys)
        if not any(row.id == key_id and _within(caller, row) for row in rows):
            raise not_found
    if not await call_store(state.main.revoke_api_key, key_id):
        raise not_found
    return Response(status_code=204)
