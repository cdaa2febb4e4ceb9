"""The webhook sender's handler: one signed POST per finished job, with a few quick retries."""

from __future__ import annotations

import time
from collections.abc import Sequence

import httpx
import structlog
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from common.errors import TransientError
from common.handlers import HandlerResult, Outcome, per_message
from common.webhooks import SIGNATURE_HEADER, sign
from schemas.streams import Stage, WebhookMessage

log = structlog.get_logger(__name__)


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
