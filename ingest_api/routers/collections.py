"""Collections: separate galleries in one installation. Listed and read with a read key (a key limited to
collections sees only its own); created and erased with an admin key."""

from __future__ import annotations

from fastapi import APIRouter, Response

from common.db.main_repository import DEFAULT_COLLECTION_ID, CollectionNotEmpty, CollectionRow, DuplicateCollection
from ingest_api.auth import ADMIN, READ, Caller
from ingest_api.collection_access import collection_not_found
from ingest_api.deps import State
from ingest_api.openapi import problems
from ingest_api.problems import ApiError
from ingest_api.stores import call_store
from schemas.api import Collection, CollectionCreate, CollectionName

router = APIRouter(prefix="/v1/collections", tags=["collections"], dependencies=[READ])


def view(row: CollectionRow) -> Collection:
    return Collection(
        name=row.name,
        keep_unknown_faces=row.keep_unknown_faces,
        unknown_retention_hours=row.unknown_retention_hours,
        created_at=row.created_at,
    )


@router.get("", response_model=list[Collection])
async def list_collections(state: State, caller: Caller) -> list[Collection]:
    ids = None if caller.collection_ids is None else sorted(caller.collection_ids)
    return [view(row) for row in await call_store(state.main.list_collections, ids)]


@router.post("", status_code=201, response_model=Collection, dependencies=[ADMIN], responses=problems(403, 409))
async def create_collection(body: CollectionCreate, state: State, caller: Caller) -> Collection:
    if caller.collection_ids is not None:
        # It could not see what it made, and a 409 would tell it which names exist elsewhere.
        raise ApiError(403, "insufficient_scope", "a key limited to collections cannot create collections")
    try:
        row = await call_store(state.main.create_collection, body.name)
    except DuplicateCollection as exc:
        raise ApiError(409, "collection_exists", f"collection {body.name!r} exists") from exc
    return view(row)


@router.get("/{name}", response_model=Collection, responses=problems(404))
async def get_collection(name: CollectionName, state: State, caller: Caller) -> Collection:
    row = await state.collections.visible(caller, name)
    # Read again: the cached row's unknown-face policy may be older than a PATCH of it (on this or another process).
    fresh = await call_store(state.main.get_collection, row.id)
    if fresh is None:
        raise collection_not_found(name)
    return view(fresh)


@router.delete("/{name}", status_code=204, dependencies=[ADMIN], responses=problems(404, 409))
async def delete_collection(name: CollectionName, state: State, caller: Caller) -> Response:
    """Erase the collection and everything it holds: every person in it as `DELETE /v1/users/{id}` erases them,
    then the collection itself. The default collection is emptied and stays. Cut short (an outage), the same
    call finishes it."""
    row = await state.collections.visible(caller, name)
    keep = row.id == DEFAULT_COLLECTION_ID
    try:
        await call_store(state.erasure.erase_collection, row.id, keep_row=keep)
    except CollectionNotEmpty as exc:
        raise ApiError(
            409, "collection_busy", f"people are still being added to {name!r}; retry", headers={"Retry-After": "1"}
        ) from exc
    if not keep:
        state.collections.forget(row)
    return Response(status_code=204)
