"""Every error is application/problem+json (RFC 9457) with a stable ``code``."""

from __future__ import annotations

from http import HTTPStatus

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest_api.route_lookup import allowed_methods

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


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


def unavailable(what: str, retry_after: int = 5) -> ApiError:
    return ApiError(
        503,
        "dependency_unavailable",
        f"{what} is unavailable; retry later",
        headers={"Retry-After": str(retry_after)},
    )


def user_not_found(user_id: int) -> ApiError:
    return ApiError(404, "user_not_found", f"user {user_id} not found")


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

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never leak SQL or stack traces to the client; the log has them.
        log.exception("api.unhandled_error", error=repr(exc))
        return problem_response(500, "internal_error", "internal error; see the server log")
