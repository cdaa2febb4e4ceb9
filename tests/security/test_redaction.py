"""Credentials in a callback URL never reach a log line or a dead letter's reason (issue 15)."""

from __future__ import annotations

import base64
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from common.redaction import RedactingFilter, redact_event, redact_urls
from operations.services import LocalServices
from schemas.streams import Stage, WebhookMessage
from tests.security.receivers import receiver, webhook_worker_env

PASSWORD = "s3cr3t-Pa55w0rd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"POST https://hookuser:{PASSWORD}@example.com/h: boom", "POST https://***@example.com/h: boom"),
        (f"http://u:{PASSWORD}%40x@h:81/a?b=c@d", "http://***@h:81/a?b=c@d"),  # an encoded @ in the password
        (f"http://{PASSWORD}@h/", "http://***@h/"),
        (
            f"POST /v1/search?callback_url=https%3A%2F%2Fu%3A{PASSWORD}%40h.example%2Fhook&wait=1 HTTP/1.1",
            "POST /v1/search?callback_url=https%3A%2F%2F***%40h.example%2Fhook&wait=1 HTTP/1.1",
        ),
        ("https://example.com/path@v2 and mail me@example.com", "https://example.com/path@v2 and mail me@example.com"),
    ],
)
def test_redact_urls(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


def test_structlog_fields_and_stdlib_records_are_redacted() -> None:
    event = redact_event(None, "info", {"event": "webhook.delivered", "url": f"https://u:{PASSWORD}@h/", "n": 3})
    assert event == {"event": "webhook.delivered", "url": "https://***@h/", "n": 3}
    # uvicorn's access log line, where callback_url is a percent-encoded query parameter
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", f"/v1/search?callback_url=https%3A%2F%2Fu%3A{PASSWORD}%40h%2F", "1.1", 202),
        None,
    )
    assert RedactingFilter().filter(record)
    assert PASSWORD not in record.getMessage() and "%3A%2F%2F***%40h" in record.getMessage()


def test_configure_logging_redacts_every_logger_of_the_process() -> None:
    """As `fecapass api` and `fecapass worker` set logging up: uvicorn's access log and httpx's request line."""
    script = f"""
import logging, structlog
from common.logs import configure_logging
configure_logging("INFO", json=True)
path = "/v1/search?callback_url=http%3A%2F%2Fu%3A{PASSWORD}%40h%2F"
logging.getLogger("uvicorn.access").info('%s - "%s %s" %d', "c", "POST", path, 202)
logging.getLogger("httpx").info('HTTP Request: %s %s "%s"', "POST", "http://u:{PASSWORD}@h/", "HTTP/1.1 204")
structlog.get_logger().info("webhook.delivered", url="http://u:{PASSWORD}@h/")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3, done.stderr
    assert PASSWORD not in done.stderr and done.stderr.count("***") == 3


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.integration
def test_no_log_line_or_dead_letter_of_the_webhook_stage_holds_the_password(
    services: LocalServices, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """`fecapass worker webhook` delivers, retries and dead-letters URLs with credentials; its whole log and
    every dead letter's reason are searched for the password."""

    def with_credentials(url: str) -> str:
        return url.replace("http://", f"http://hookuser:{PASSWORD}@")

    env = webhook_worker_env(services, WEBHOOK_ATTEMPTS="1", CLAIM_IDLE_MS="300", MAX_DELIVERIES="2")
    log_path = tmp_path / "webhook.log"
    with receiver() as ok, receiver(status=503) as failing, log_path.open("wb") as log:
        urls = {
            "delivered": with_credentials(ok.url),
            "answers-503": with_credentials(failing.url),
            "unreachable": with_credentials(f"http://127.0.0.1:{closed_port()}/hook"),
            "refused": with_credentials("http://10.255.0.1/hook"),
        }
        for job_id, url in urls.items():
            redis_client.xadd(Stage.WEBHOOK.stream, WebhookMessage(job_id=job_id, url=url, body="{}").to_fields())
        process = subprocess.Popen(
            [sys.executable, "-m", "operations.cli", "worker", "webhook"], env=env, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while redis_client.xlen(Stage.WEBHOOK.dead_letter_stream) < 3 and time.monotonic() < deadline:
                assert process.poll() is None, log_path.read_text()
                time.sleep(0.1)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        assert ok.arrived.is_set()
    # The credentials were used (as Basic auth), only never written down.
    expected = "Basic " + base64.b64encode(f"hookuser:{PASSWORD}".encode()).decode()
    assert ok.requests[0][1]["Authorization"] == expected
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    names = {event["event"] for event in events}
    assert {"webhook.delivered", "webhook.refused", "stage.retry_later", "stage.dead_lettered"} <= names, names
    assert PASSWORD not in log_path.read_text()
    letters = {
        fields[b"job_id"].decode(): {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in redis_client.xrange(Stage.WEBHOOK.dead_letter_stream)
    }
    assert set(letters) == {"answers-503", "unreachable", "refused"}
    assert letters["refused"]["dead_error_code"] == "callback_url_refused"
    assert {letters[j]["dead_error_code"] for j in ("answers-503", "unreachable")} == {"too_many_deliveries"}
    for letter in letters.values():
        # The original fields stay as queued, for `fecapass dlq replay`; everything written about them is redacted.
        assert letter["url"] == urls[letter["job_id"]]
        assert all(PASSWORD not in value for name, value in letter.items() if name != "url")
        assert "***@127.0.0.1" in letter["dead_error"] or "***@10.255.0.1" in letter["dead_error"]
    assert all(PASSWORD not in v.decode() for v in redis_client.hvals(f"{Stage.WEBHOOK.stream}:errors"))
