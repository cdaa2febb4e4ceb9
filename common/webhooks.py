"""Signed webhooks: a finished job with a ``callback_url`` is queued on ``fecapass:webhook`` in the same
transaction that finishes it, and the webhook stage POSTs it, so no face stage ever waits on a client.

Every request carries ``X-Fecapass-Signature: t=<unix time>,v1=<hex HMAC-SHA256>`` over ``<t>.<body>`` with
the shared secret ``FECAPASS_WEBHOOK_SECRET``. Receivers recompute it, compare in constant time, and refuse a
``t`` older than a few minutes (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from typing import Any

import httpx
import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from common.errors import TransientError
from common.handlers import HandlerResult, Outcome, per_message
from schemas.jobs import JobState
from schemas.streams import PipelineMessage, Stage, StreamMessage, WebhookMessage

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Fecapass-Signature"


def queue_job_finished(
    pipe: Any,
    message: StreamMessage,
    state: JobState,
    *,
    result: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
) -> None:
    """Queue the webhook of a finished job on ``pipe``, when the job asked for one."""
    if not isinstance(message, PipelineMessage) or not message.callback_url:
        return
    payload: dict[str, Any] = {"job_id": message.job_id, "kind": message.kind.value, "state": state.value}
    if result is not None:
        payload["result"] = result
    if error is not None:
        payload["error"] = {"code": error[0], "message": error[1]}
    payload["finished_at"] = time.time()
    body = json.dumps(payload, separators=(",", ":"))
    pipe.xadd(
        Stage.WEBHOOK.stream, WebhookMessage(job_id=message.job_id, url=message.callback_url, body=body).to_fields()
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


class DeliveryFailed(TransientError):
    pass


class WebhookHandler:
    stage = Stage.WEBHOOK
    message_type = WebhookMessage

    def __init__(self, client: httpx.Client, secret: bytes, attempts: int) -> None:
        self.client = client
        self.secret = secret
        self.attempts = attempts

    def _post(self, message: WebhookMessage) -> None:
        body = message.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            "X-Fecapass-Job-Id": message.job_id,
        }
        try:
            response = self.client.post(message.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"POST {message.url}: {exc}") from exc
        if response.status_code >= 300:
            raise DeliveryFailed(f"POST {message.url} answered {response.status_code}")

    def handle(self, message: WebhookMessage) -> Outcome:
        # A few quick retries here; past them the runner redelivers after the visibility timeout and
        # dead-letters after FECAPASS_MAX_DELIVERIES.
        for attempt in Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=0.5, max=8),
            retry=retry_if_exception_type(DeliveryFailed),
            reraise=True,
        ):
            with attempt:
                self._post(message)
        log.info("webhook.delivered", job_id=message.job_id, url=message.url)
        return Outcome()

    def handle_batch(self, messages: Sequence[WebhookMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)
