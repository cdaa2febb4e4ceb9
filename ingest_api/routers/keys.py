"""What the calling key may do, and API keys for admin keys: list, create (the key is shown once), revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response

from common.apikeys import Scope
from common.db.main_repository import ApiKeyRow
from ingest_api.auth import ADMIN, READ
from ingest_api.deps import State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError
from ingest_api.stores import call_store
from schemas.console import ApiKey, ApiKeyCreate, ApiKeyCreated, Me

router = APIRouter(prefix="/v1", tags=["keys"], dependencies=[READ])


@router.get("/me", response_model=Me)
async def who_am_i(scope: Scope = READ) -> Me:
    """The scope of the key sent, so a client (the console) offers only what it may do."""
    return Me(scope=scope.value)


def _view(row: ApiKeyRow) -> ApiKey:
    return ApiKey(**row.__dict__)


@router.get("/keys", response_model=list[ApiKey], dependencies=[ADMIN])
async def list_keys(state: State) -> list[ApiKey]:
    return [_view(row) for row in await call_store(state.main.list_api_keys)]


@router.post("/keys", status_code=201, response_model=ApiKeyCreated, dependencies=[ADMIN])
async def create_key(body: ApiKeyCreate, state: State) -> ApiKeyCreated:
    """A new key; it is in this answer only (only its SHA-256 is stored)."""
    created = await call_store(state.main.create_api_key, body.name, body.scope)
    return ApiKeyCreated(**created.row.__dict__, key=created.key)


@router.delete("/keys/{key_id}", status_code=204, dependencies=[ADMIN], responses=problems(404))
async def revoke_key(key_id: int, state: State) -> Response:
    """Revoke a key: refused on every API process within 30 s (their key caches)."""
    if not await call_store(state.main.revoke_api_key, key_id):
        raise ApiError(404, "key_not_found", f"no active key with id {key_id}")
    return Response(status_code=204)
