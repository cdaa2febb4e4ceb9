"""The API's errors as exceptions: one class per HTTP status a caller may want to catch, each with the problem's
stable ``code`` (README, error table), its ``detail`` and, where the API sent them, ``retry_after`` and ``job_id``."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any


class FecapassError(Exception):
    """Any failure of a call. ``status`` is the HTTP status (None when no answer came), ``code`` the API's
    machine-readable reason (e.g. ``user_not_found``), ``detail`` its human-readable message."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str = "http_error",
        retry_after: float | None = None,
        job_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}" if status is None else f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after
        self.job_id = job_id


class Unauthorized(FecapassError):
    """401: the API key is missing, unknown or revoked."""


class Forbidden(FecapassError):
    """403: the key's scope does not allow this call."""


class NotFound(FecapassError):
    """404: the user, face, job or collection does not exist (or the key may not see it)."""


class Conflict(FecapassError):
    """409: e.g. ``email_taken``, or ``idempotency_key_in_progress`` once the retries are spent."""


class PayloadTooLarge(FecapassError):
    """413: the photo is over the API's size limit."""


class UnsupportedMedia(FecapassError):
    """415: not a photo format the API reads."""


class ValidationFailed(FecapassError):
    """422: the request, or the photo (``no_face``, ``undecodable_image``, ...), was refused."""


class RateLimited(FecapassError):
    """429: too many uploads in flight for this key, or the pipeline's backlog is full; retried first."""


class Unavailable(FecapassError):
    """503: a dependency of the API is down, or it is busy; retried first."""


class ConnectionFailed(FecapassError):
    """No answer: the connection failed or timed out, on every attempt."""


class InvalidResponse(FecapassError):
    """An answer this client cannot read (not the API, or a version that dropped a field)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code="invalid_response")


class JobTimeout(FecapassError):
    """``wait_for_job`` ran out of time before the job finished; ``state`` is the job's last known state."""

    def __init__(self, job_id: str, state: str, waited: float) -> None:
        super().__init__(
            f"job {job_id} still {state} after {waited:.1f} s", code="job_timeout", job_id=job_id, status=None
        )
        self.state = state


BY_STATUS: dict[int, type[FecapassError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMedia,
    422: ValidationFailed,
    429: RateLimited,
    503: Unavailable,
}


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_from_answer(status: int, headers: Mapping[str, str], body: Any) -> FecapassError:
    """The exception for a problem answer (application/problem+json); any other error body still maps by status."""
    problem = body if isinstance(body, dict) else {}
    code = problem.get("code")
    detail = problem.get("detail")
    job_id = problem.get("job_id")
    kind = BY_STATUS.get(status, FecapassError)
    return kind(
        str(detail) if detail is not None else f"HTTP {status}",
        status=status,
        code=str(code) if code else f"http_{status}",
        retry_after=retry_after_seconds(headers.get("retry-after")),
        job_id=str(job_id) if job_id else None,
    )
