"""Which route a request will reach, found from its scope before the router runs: the key check needs the
route's scope before the body is read, and a 405 names every method the path answers."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def route_for(routes: Sequence[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route that will handle the request (path and method match), as the router picks it: the first."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
    return None


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route answers at this path (Starlette's own 405 names only the first route's). Each
    method is tried against the routes as they are, included routers too, so no router internals are read."""
    return [
        method
        for method in METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]
