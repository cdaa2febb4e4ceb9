"""X-API-Key authentication with read, write and admin scopes, checked from the headers before any body is read.

One place enforces it: the `Authenticate` middleware, for every path under /v1 (a new route cannot opt out).
The scope a route needs is declared once, as a dependency: each /v1 router carries ``READ`` (or ``WRITE``) and a
route that needs more adds ``WRITE`` or ``ADMIN``; the strongest declared wins, and a /v1 route that declares none
needs ``WRITE``. The dependencies also put the key in the OpenAPI document. Health and metrics need no key.

A key may be limited to collections: the middleware leaves them beside the scope, and the routes hand them to
``ingest_api.collection_access``, which answers 404 for anything outside them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, FastAPI, Request, Security
from fastapi.params import Depends as DependsParam
from fastapi.security import APIKeyHeader
from starlette._utils import get_route_path  # the router's own reading of the path (FastAPI imports it too)
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from common.apikeys import Scope, hash_key
from common.db.main_repository import KeyGrant, MainRepository
from ingest_api.problems import ApiError, problem_response
from ingest_api.route_lookup import route_for
from ingest_api.stores import call_store

# A revoked key stops working within this many seconds on every API process.
KEY_CACHE_SECONDS = 30
SECURED_PREFIX = "/v1"
API_KEY_HEADER = "X-API-Key"
# Where the middleware leaves the key's scope for the route (request.state.api_key_scope), and its collections.
GRANTED = "api_key_scope"
GRANTED_COLLECTIONS = "api_key_collections"
# Seconds a client refused for too many uploads in flight is told to wait.
UPLOADS_RETRY_AFTER = 2

api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="a key from `fecapass keys create`")


class KeyChecker:
    def __init__(self, main: MainRepository) -> None:
        self.main = main
        self._cache: TTLCache[bytes, KeyGrant | None] = TTLCache(maxsize=10_000, ttl=KEY_CACHE_SECONDS)

    async def grant_of(self, key: str) -> KeyGrant | None:
        digest = hash_key(key)
        if digest not in self._cache:
            self._cache[digest] = await call_store(self.main.api_key_grant, digest)
        return self._cache[digest]

    async def scope_of(self, key: str) -> Scope | None:
        grant = await self.grant_of(key)
        return Scope(grant.scope) if grant is not None else None


class Needs:
    """The scope a route needs, as a dependency. It checks nothing itself: the middleware did, before the
    body was read; it hands the route the key's scope."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, request: Request, _: Annotated[str | None, Security(api_key_header)] = None) -> Scope:
        granted = request.scope.get("state", {}).get(GRANTED)
        if granted is None:  # the app was built without Authenticate: refuse rather than serve unchecked
            raise RuntimeError(f"{request.url.path} reached without the Authenticate middleware")
        return Scope(granted)


READ = Security(Needs(Scope.READ))
WRITE = Security(Needs(Scope.WRITE))
ADMIN = Security(Needs(Scope.ADMIN))


async def caller_grant(request: Request) -> KeyGrant:
    """The calling key's scope and collections, as the middleware checked them. (async: FastAPI runs a plain def
    dependency on a worker thread.)"""
    state = request.scope.get("state", {})
    granted = state.get(GRANTED)
    if granted is None:
        raise RuntimeError(f"{request.url.path} reached without the Authenticate middleware")
    return KeyGrant(str(granted), state.get(GRANTED_COLLECTIONS))


Caller = Annotated[KeyGrant, Depends(caller_grant)]


def declared_scope(route: BaseRoute) -> Scope:
    dependencies: list[DependsParam] = getattr(route, "dependencies", [])
    declared = {d.dependency.scope for d in dependencies if isinstance(d.dependency, Needs)}
    return max(declared, key=lambda scope: scope.rank) if declared else Scope.WRITE


def check_every_operation_declared(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Refuse to start when the OpenAPI document has a /v1 operation the key check does not know (a router
    included without being listed among the /v1 routers): its scope would be a guess."""
    known = {(getattr(route, "path", ""), method) for route in routes for method in getattr(route, "methods", ())}
    for path, operations in app.openapi()["paths"].items():
        unknown = {(path, method.upper()) for method in operations} - known
        if path.startswith(SECURED_PREFIX + "/") and unknown:
            raise RuntimeError(f"/v1 operations outside the key check's routers: {sorted(unknown)}")


def _has_body(headers: dict[bytes, bytes]) -> bool:
    return headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers


class Authenticate:
    """401/403 from the headers alone, so an unauthenticated client cannot make the API read (or parse) a
    body; and at most ``max_uploads`` requests with a body in flight per key on this process."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], max_uploads: int) -> None:
        self.app = app
        self.routes = routes  # those of the /v1 routers, where each route carries its routers' dependencies
        self.max_uploads = max_uploads
        self._uploads: Counter[str] = Counter()

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        path = get_route_path(scope) if scope["type"] == "http" else ""  # as the router sees it: less root_path
        if not (path == SECURED_PREFIX or path.startswith(SECURED_PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        with_body = _has_body(headers)
        key = headers.get(API_KEY_HEADER.lower().encode(), b"").decode("latin-1")
        try:
            grant = await self._check(scope, key)
        except ApiError as exc:
            response = problem_response(exc.status, exc.code, exc.detail, exc.headers)
            if with_body:  # the body is never read: the connection cannot carry another request
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[GRANTED], state[GRANTED_COLLECTIONS] = grant.scope, grant.collection_ids
        if not with_body:
            await self.app(scope, receive, send)
            return
        if self._uploads[key] >= self.max_uploads:
            response = problem_response(
                429,
                "too_many_uploads",
                f"this key already has {self.max_uploads} uploads in flight; retry when one has finished",
                headers={"Retry-After": str(UPLOADS_RETRY_AFTER), "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        self._uploads[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._uploads[key] -= 1
            if not self._uploads[key]:
                del self._uploads[key]

    async def _check(self, scope: AsgiScope, key: str) -> KeyGrant:
        challenge = {"WWW-Authenticate": "ApiKey"}
        if not key:
            raise ApiError(401, "missing_api_key", "send an API key in the X-API-Key header", headers=challenge)
        app = scope["app"]
        keys: KeyChecker = app.state.fecapass.keys
        grant = await keys.grant_of(key)
        if grant is None:
            raise ApiError(401, "invalid_api_key", "the API key is unknown or revoked", headers=challenge)
        granted = Scope(grant.scope)
        route = route_for(self.routes, scope)
        # No route (404) or another method (405): any valid key may learn that.
        needed = declared_scope(route) if route is not None else Scope.READ
        if not granted.allows(needed):
            raise ApiError(403, "insufficient_scope", f"this key has the {granted} scope; {needed} is needed")
        return grant
