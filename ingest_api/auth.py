"""X-API-Key authentication with read and write scopes. Health and metrics need no key."""

from __future__ import annotations

from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, Security
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from common.apikeys import Scope, hash_key
from common.db.main_repository import MainRepository
from ingest_api.deps import State
from ingest_api.problems import ApiError

# A revoked key stops working within this many seconds on every API process.
KEY_CACHE_SECONDS = 30

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="a key from `fecapass keys create`")


class KeyChecker:
    def __init__(self, main: MainRepository) -> None:
        self.main = main
        self._cache: TTLCache[bytes, Scope | None] = TTLCache(maxsize=10_000, ttl=KEY_CACHE_SECONDS)

    async def scope_of(self, key: str) -> Scope | None:
        digest = hash_key(key)
        if digest not in self._cache:
            scope = await run_in_threadpool(self.main.api_key_scope, digest)
            self._cache[digest] = Scope(scope) if scope else None
        return self._cache[digest]


def _require(needed: Scope):  # type: ignore[no-untyped-def]
    async def check(state: State, key: Annotated[str | None, Security(api_key_header)] = None) -> Scope:
        if not key:
            raise ApiError(
                401,
                "missing_api_key",
                "send an API key in the X-API-Key header",
                headers={"WWW-Authenticate": "ApiKey"},
            )
        scope = await state.keys.scope_of(key)
        if scope is None:
            raise ApiError(
                401, "invalid_api_key", "the API key is unknown or revoked", headers={"WWW-Authenticate": "ApiKey"}
            )
        if not scope.allows(needed):
            raise ApiError(403, "insufficient_scope", f"this key has the {scope} scope; {needed} is needed")
        return scope

    return Depends(check)


READ = _require(Scope.READ)
WRITE = _require(Scope.WRITE)
ADMIN = _require(Scope.ADMIN)
