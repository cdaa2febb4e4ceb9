"""Finished jobs are POSTed, signed, to their callback_url; a failing receiver is retried; internal destinations
are refused. The cluster allows 127.0.0.1/32 (FECAPASS_WEBHOOK_ALLOW in conftest), where these receivers listen."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest

from common.webhooks import SIGNATURE_HEADER, verify
from operations.services import LocalServices
from tests.e2e.conftest import RunningPipeline, upload

pytestmark = pytest.mark.e2e


@dataclass
class Receiver:
    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    failures_left: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.failures_left > 0:
                state.failures_left -= 1
                self.send_response(503)
            else:
                state.requests.append((dict(self.headers), body))
                state.arrived.set()
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


def test_finished_job_is_posted_with_a_valid_signature(
    pipeline: RunningPipeline, enrolled: dict[str, Any], receiver: Receiver, services: LocalServices
) -> None:
    with pipeline.client("read") as client:
        job = upload(client, "/v1/search", "obama_2.jpg", {"callback_url": receiver.url}).json()
    assert receiver.arrived.wait(60), "no webhook arrived"
    headers, body = receiver.requests[0]
    payload = json.loads(body)
    assert payload["job_id"] == job["job_id"] and payload["state"] == "done"
    assert payload["result"]["faces"][0]["matches"][0]["user_id"] == enrolled["users"]["obama"]
    with pipeline.client("read") as client:
        api_result = client.get(f"/v1/jobs/{job['job_id']}").json()["result"]
    # The same result as the API's, photo URLs included; only the moment each URL was signed differs.
    assert unsigned(payload["result"]) == unsigned(api_result)
    assert payload["result"]["faces"][0]["matches"][0]["photo_url"].startswith("http")
    assert b"image_key" not in body
    secret = services.credentials.webhook_secret.encode()
    assert verify(secret, body, headers[SIGNATURE_HEADER])
    assert not verify(secret, body + b" ", headers[SIGNATURE_HEADER])  # any change breaks it
    assert not verify(b"another secret", body, headers[SIGNATURE_HEADER])


def unsigned(result: dict[str, Any]) -> dict[str, Any]:
    """The result with each photo URL cut to its path (the query holds the signing time and signature)."""
    copy = json.loads(json.dumps(result))
    for face in copy.get("faces", []):
        for match in face.get("matches", []):
            match["photo_url"] = urlsplit(match["photo_url"]).path
    return copy


def test_failed_job_is_posted_and_a_failing_receiver_is_retried(pipeline: RunningPipeline, receiver: Receiver) -> None:
    receiver.failures_left = 2  # the first two tries get 503
    with pipeline.client("read") as client:
        job = upload(client, "/v1/search", "aligned112_tom_hanks.png", {"callback_url": receiver.url}).json()
    assert receiver.arrived.wait(60), "no webhook arrived"
    payload = json.loads(receiver.requests[0][1])
    assert payload["job_id"] == job["job_id"] and payload["state"] == "failed"
    assert payload["error"]["code"] == "no_face"
    assert receiver.failures_left == 0 and len(receiver.requests) == 1


def test_callback_url_must_be_http(pipeline: RunningPipeline) -> None:
    with pipeline.client("read") as client:
        response = upload(client, "/v1/search", "obama_2.jpg", {"callback_url": "file:///etc/passwd"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[::ffff:10.0.0.1]/hook",  # a private address, IPv4-mapped
        "http://0x7f000002:6379/",  # loopback, but not the one address the cluster allows
        "http://[::1]:5432/",
    ],
)
def test_internal_callback_url_is_refused_at_submit(pipeline: RunningPipeline, url: str) -> None:
    with pipeline.client("read") as client:
        response = upload(client, "/v1/search", "obama_2.jpg", {"callback_url": url})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "callback_url_refused"


def test_signature_check_refuses_stale_timestamps() -> None:
    from common.webhooks import sign

    header = sign(b"s", b"{}", 1_000_000)
    assert verify(b"s", b"{}", header, now=1_000_100)
    assert not verify(b"s", b"{}", header, now=1_000_000 + 3600)
    assert not verify(b"s", b"{}", "garbage")
