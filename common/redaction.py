"""Credentials in URLs never reach a log line: ``https://user:secret@host/`` is written ``https://***@host/``.

A callback URL may carry a receiver's credentials, and it passes through the API's access log (as a query
parameter, percent-encoded), httpx's request log, the webhook stage's events and the runner's retry and
dead-letter reasons. ``redact_urls`` is the one place that removes them; ``install`` puts it in front of
every log line of the process (structlog events and the standard library's records alike).
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any

REDACTED = "***"

# The userinfo of a URL runs from "//" to the last "@" before the host: greedy over characters that cannot
# end the authority, so a password holding an encoded "@" (%40) is removed whole.
_PLAIN = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s]*@")
# The same URL percent-encoded inside another one (a query string in the access log): "%3A%2F%2F" ... "%40".
_ENCODED = re.compile(r"(?i)(%3A%2F%2F)(?:(?!%2F|%3F|%23)[^/?#&\s])*%40")


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it, plain or percent-encoded, replaced by ``***``."""
    if "@" not in text and "%40" not in text.upper():
        return text
    text = _PLAIN.sub(rf"\1{REDACTED}@", text)
    return _ENCODED.sub(rf"\1{REDACTED}%40", text)


def redact_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: every string field of every event goes through ``redact_urls``."""
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = redact_urls(value)
    return event_dict


class RedactingFilter(logging.Filter):
    """For standard-library records (uvicorn's access log, httpx): the formatted message, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install(handlers: list[logging.Handler]) -> None:
    """Filter on the handlers themselves: records propagated from child loggers skip the root's own filters."""
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
