"""Which collection a request works in, and what the calling key may see of it.

A collection is named by its name in the API; its row is looked up once and cached for a few seconds (names and ids
never change; a deleted collection's cached row only lets a request reach an empty gallery, and PostgreSQL's
foreign keys refuse a person made in it). A key limited to collections is answered 404 for every other collection
and for the people, faces and jobs in them, with the code a missing one gets: it learns nothing about what exists
elsewhere.
"""

from __future__ import annotations

from cachetools import TTLCache

from common.db.main_repository import DEFAULT_COLLECTION_ID, CollectionRow, KeyGrant, MainRepository
from ingest_api.problems import ApiError
from ingest_api.stores import call_store

# How long a collection's row is reused before it is read again.
COLLECTION_CACHE_SECONDS = 10


def collection_not_found(name: str) -> ApiError:
    return ApiError(404, "collection_not_found", f"collection {name!r} not found")


class CollectionDirectory:
    def __init__(self, main: MainRepository) -> None:
        self.main = main
        self._by_name: TTLCache[str, CollectionRow] = TTLCache(maxsize=10_000, ttl=COLLECTION_CACHE_SECONDS)
        self._names: TTLCache[int, str] = TTLCache(maxsize=10_000, ttl=COLLECTION_CACHE_SECONDS)

    async def named(self, name: str) -> CollectionRow | None:
        found = self._by_name.get(name)
        if found is None:
            found = await call_store(self.main.collection_named, name)
            if found is not None:
                self._remember(found)
        return found

    async def name_of(self, collection_id: int) -> str:
        """The collection's name, for responses; a collection deleted meanwhile is named by its id."""
        name = self._names.get(collection_id)
        if name is None:
            row = await call_store(self.main.get_collection, collection_id)
            if row is None:
                return str(collection_id)
            self._remember(row)
            name = row.name
        return name

    def forget(self, row: CollectionRow) -> None:
        self._by_name.pop(row.name, None)
        self._names.pop(row.id, None)

    def _remember(self, row: CollectionRow) -> None:
        self._by_name[row.name] = row
        self._names[row.id] = row.name

    async def visible(self, caller: KeyGrant, name: str) -> CollectionRow:
        """The collection of this name if the key may see it; else 404 collection_not_found, whether it exists or
        not."""
        row = await self.named(name)
        if row is None or not caller.sees(row.id):
            raise collection_not_found(name)
        return row

    async def visible_ids(self, caller: KeyGrant, names: list[str]) -> list[int]:
        return [(await self.visible(caller, name)).id for name in names]


def sees(caller: KeyGrant, collection_id: int | None) -> bool:
    """Whether the key may see something of this collection (None: a job from before collections, in default)."""
    return caller.sees(DEFAULT_COLLECTION_ID if collection_id is None else collection_id)
