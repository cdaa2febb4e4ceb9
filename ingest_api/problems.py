"""Every error is application/problem+json (RFC 9457) with a stable ``code``."""

from __future__ import annotations

from http import HTTPStatus

import minio.error
import psycopg
import redis.exceptions
import structlog
import urllib3.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import TransientError
from ingest_api.route_lookup import allowed_methods

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.job_id = job_id


def unavailable(what: str, retry_after: int = RETRY_AFTER_SECONDS) -> ApiError:
    return ApiError(
        503,
        "dependency_unavailable",
        f"{what} is unavailable; retry later",
        headers={"Retry-After": str(retry_after)},
    )


def user_not_found(user_id: int) -> ApiError:
    return ApiError(404, "user_not_found", f"user {user_id} not found")


def collection_mismatch(detail: str) -> ApiError:
    return ApiError(409, "collection_mismatch", f"{detail}: faces never move between collections")


# What a store that is down raises, anywhere in a request (the API-key lookup included), and the name the client
# is told. One mapping for every route: a route lets these propagate and the client gets 503 with Retry-After.
# psycopg's OperationalError covers a refused or broken connection and psycopg_pool's PoolTimeout; redis-py's
# ConnectionError covers MaxConnectionsError and "No connection available" from the blocking pool.
OUTAGES: tuple[tuple[type[Exception], str], ...] = (
    (psycopg.OperationalError, "a database"),
    (redis.exceptions.ConnectionError, "Redis"),
    (redis.exceptions.TimeoutError, "Redis"),
    (redis.exceptions.ReadOnlyError, "Redis"),  # a replica during failover
    (redis.exceptions.OutOfMemoryError, "Redis"),  # maxmemory reached: it refuses writes until work drains
    (urllib3.exceptions.HTTPError, "object storage"),
    (minio.error.ServerError, "object storage"),
    (TransientError, "a database or object storage"),  # what ObjectStore and the repositories wrap them in
)


def outage_of(exc: BaseException) -> str | None:
    """The dependency ``exc`` (or what it was raised from) says is down, or None for any other error."""
    seen: BaseException | None = exc
    for _ in range(5):  # the cause chain, bounded
        if seen is None:
            return None
        for kind, name in OUTAGES:
            if isinstance(seen, kind):
                return name
        if isinstance(seen, BaseExceptionGroup):
            return next((found for inner in seen.exceptions if (found := outage_of(inner))), None)
        seen = seen.__cause__
    return None


def problem_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, job_id: str | None = None
) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if job_id:
        body["job_id"] = job_id
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, exc.headers, exc.job_id)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return problem_response(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
        return problem_response(exc.status_code, code, str(exc.detail), headers or None)

    async def dependency_down(request: Request, exc: Exception) -> JSONResponse:
        what = outage_of(exc) or "a dependency"
        log.warning("api.dependency_unavailable", dependency=what, path=request.url.path, error=repr(exc))
        error = unavailable(what)
        return problem_response(error.status, error.code, error.detail, error.headers)

    for kind, _ in OUTAGES:
        app.add_exception_handler(kind, dependency_down)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if outage_of(exc) is not None:  # wrapped in something else (an exception group, another error)
            return await dependency_down(request, exc)
        # Never leak SQL or stack traces to the client; the log has them.
        log.exception("api.unhandled_error", error=repr(exc))
        return problem_response(500, "internal_error", "internal error; see the server log")
