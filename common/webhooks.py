"""Signed webhooks, the part every stage shares: a finished job with a ``callback_url`` is queued on
``fecapass:webhook`` in the same atomic write that finishes it (the runner's settle script), and the webhook
sender stage (``webhook_sender``) POSTs it, so no face stage ever waits on a client. The body is built at finish
time, with the result as clients get it (``FinishedResult.client``: search matches with presigned photo URLs,
signed by the finishing stage), so it equals what ``GET /v1/jobs/{id}`` returns and the sender holds no S3
credentials.

Every request carries ``X-Fecapass-Signature: t=<unix time>,v1=<hex HMAC-SHA256>`` over ``<t>.<body>`` with
the shared secret ``FECAPASS_WEBHOOK_SECRET``. Receivers recompute it, compare in constant time, and refuse a
``t`` older than a few minutes (replays). Where the sender may connect at all is common/egress.py's decision
(SECURITY.md, Webhooks).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from schemas.api import JobError, WebhookBody
from schemas.jobs import JobState
from schemas.results import FinishedResult
from schemas.streams import JobMessage, StreamMessage, WebhookMessage

SIGNATURE_HEADER = "X-Fecapass-Signature"


def finished_webhook(
    message: StreamMessage,
    state: JobState,
    *,
    result: FinishedResult | None = None,
    error: tuple[str, str] | None = None,
) -> WebhookMessage | None:
    """The ``fecapass:webhook`` entry of a finished job, or None when the job asked for no callback."""
    if not isinstance(message, JobMessage) or not message.callback_url:
        return None
    body = webhook_body(message, state, result=result, error=error).model_dump_json(exclude_none=True)
    return WebhookMessage(job_id=message.job_id, url=message.callback_url, body=body)


def webhook_body(
    message: JobMessage,
    state: JobState,
    *,
    result: FinishedResult | None = None,
    error: tuple[str, str] | None = None,
) -> WebhookBody:
    return WebhookBody(
        job_id=message.job_id,
        kind=message.kind,
        state=state,
        result=result.client if result is not None else None,
        error=JobError(code=error[0], message=error[1]) if error is not None else None,
        finished_at=time.time(),
    )


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance_seconds: int = 300, now: float | None = None) -> bool:
    """What a receiver does (and the tests use): recompute, compare in constant time, refuse stale times."""
    try:
        parts = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), f"t={timestamp},v1={parts.get('v1', '')}")
