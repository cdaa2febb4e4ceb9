"""Builds the webhook handler with its HTTP client (composition root of the webhook sender stage)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from common import settings as s
from webhook_sender.stage import WebhookHandler


@contextmanager
def webhook_handler() -> Iterator[WebhookHandler]:
    settings = s.load(s.WebhookSettings)
    with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client:
        yield WebhookHandler(client, settings.webhook_secret.get_secret_value().encode(), settings.webhook_attempts)
