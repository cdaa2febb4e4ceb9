"""Which route a request will reach, found from its scope before the router runs: the key check needs the
route's scope before the body is read, and a 405 names every method the path answers."""

from __future__ import annotations

from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def route_for(routes: list[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route that will handle the request (path and method match), as the router picks it: the first."""
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return route
    return None


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route answers at this path (Starlette's own 405 names only the first route's)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)
