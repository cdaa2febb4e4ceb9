"""Builds the webhook handler with its HTTP client (composition root of the webhook sender stage)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from common import settings as s
from common.egress import EgressPolicy, EgressTransport
from webhook_sender.stage import DeliveryLimits, WebhookHandler


@contextmanager
def webhook_handler() -> Iterator[WebhookHandler]:
    settings = s.load(s.WebhookSettings)
    policy = EgressPolicy.from_settings(s.load(s.EgressSettings))
    # httpx logs every request at INFO with its full URL; webhook.delivered says the same, redacted.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    limits = DeliveryLimits(
        per_receiver=settings.webhook_per_receiver,
        concurrency=settings.webhook_concurrency,
        batch_wait_seconds=settings.webhook_batch_wait_seconds,
        attempts=settings.webhook_attempts,
    )
    transport = EgressTransport(policy, limits=httpx.Limits(max_connections=settings.webhook_concurrency))
    with httpx.Client(
        transport=transport, timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False
    ) as client:
        handler = WebhookHandler(client, settings.webhook_secret.get_secret_value().encode(), limits)
        try:
            yield handler
        finally:
            handler.close()
