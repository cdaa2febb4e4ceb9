"""How the API treats a request body, over a real socket: the key is checked before any of it is read, a client
that sends too slowly is cut off, and one key cannot hold more than its share of uploads open."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Installation, key, raw_request, read_answer, serving

pytestmark = pytest.mark.integration

FIFTEEN_MB = 15 * 1024 * 1024  # under the body limit (two photos of 10 MB): only the key can refuse it at once


# The start of a multipart body: the file part's headers and its first bytes.
FILE_PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n\xff\xd8'


def upload_head(path: str, length: int | None, headers: dict[str, str] | None = None) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: multipart/form-data; boundary=b"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return "\n".join(lines) + "\n\n"


@pytest.fixture(scope="module")
def server(installation: Installation) -> Iterator[tuple[str, int]]:
    with serving(installation.config()) as address:
        yield address


@pytest.mark.parametrize(
    ("path", "scope", "status", "code"),
    [
        ("/v1/search", None, 401, "missing_api_key"),
        ("/v1/users/1/faces", None, 401, "missing_api_key"),
        ("/v1/search", "made-up", 401, "invalid_api_key"),
        ("/v1/users/1/faces", "read", 403, "insufficient_scope"),
    ],
)
@pytest.mark.parametrize("length", [FIFTEEN_MB, None])
def test_the_key_is_checked_before_the_body_arrives(
    server: tuple[str, int],
    installation: Installation,
    path: str,
    scope: str | None,
    status: int,
    code: str,
    length: int | None,
) -> None:
    headers = {} if scope is None else {"X-API-Key": installation.keys.get(scope, "fcp_made_up")}
    # Headers and the first bytes of a 15 MB body; the rest never comes. The answer must not wait for it.
    body = FILE_PART if length is not None else f"{len(FILE_PART):x}\r\n".encode() + FILE_PART + b"\r\n"
    with raw_request(server, upload_head(path, length, headers), body) as connection:
        connection.settimeout(15)
        answer, headers_back, content = read_answer(connection)
    assert answer == status and json.loads(content)["code"] == code
    assert headers_back["connection"] == "close"  # the unread body leaves the connection unusable


def test_bad_json_without_a_key_is_401_not_422(api: TestClient, installation: Installation) -> None:
    for headers in ({}, {"X-API-Key": "fcp_made_up"}):
        response = api.post("/v1/users", content=b"{not json", headers={**headers, "content-type": "application/json"})
        assert response.status_code == 401 and response.json()["code"] in ("missing_api_key", "invalid_api_key")
    refused = api.post(
        "/v1/users", content=b"{not json", headers={**key(installation, "read"), "content-type": "application/json"}
    )
    assert refused.status_code == 403
    parsed = api.post(
        "/v1/users", content=b"{not json", headers={**key(installation, "write"), "content-type": "application/json"}
    )
    assert parsed.status_code == 422 and parsed.json()["code"] == "invalid_request"


@pytest.fixture(scope="module")
def strict_server(installation: Installation) -> Iterator[tuple[str, int]]:
    with serving(installation.config(body_timeout_seconds="1", body_min_rate="1000")) as address:
        yield address


@pytest.fixture(scope="module")
def capped_server(installation: Installation) -> Iterator[tuple[str, int]]:
    with serving(installation.config(max_uploads_per_key="2")) as address:
        yield address


def test_a_body_that_stops_is_cut_off_with_408(strict_server: tuple[str, int], installation: Installation) -> None:
    before = installation.submitted()
    with raw_request(strict_server, upload_head("/v1/search", 1000, key(installation, "read")), FILE_PART) as sock:
        sock.settimeout(15)
        status, headers, content = read_answer(sock)
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(content)["code"] == "request_timeout" and "arrived for 1 s" in json.loads(content)["detail"]
    assert installation.submitted() == before


def test_a_body_that_trickles_is_cut_off_with_408(strict_server: tuple[str, int], installation: Installation) -> None:
    """A byte every 0.2 s never trips the 1 s idle limit; the 1000 bytes/s minimum rate ends it."""
    head = upload_head("/v1/search", 10_000, key(installation, "read"))
    with raw_request(strict_server, head, FILE_PART) as sock:
        sock.settimeout(15)
        for _ in range(100):  # 20 s at most; the rate check fires after about 1 s
            if select.select([sock], [], [], 0.2)[0]:
                break
            try:
                sock.sendall(b"x")
            except OSError:  # the server closed after answering
                break
        status, _, content = read_answer(sock)
    assert status == 408 and "slower than 1000 bytes a second" in json.loads(content)["detail"]


def test_uploads_in_flight_per_key_are_capped(capped_server: tuple[str, int], installation: Installation) -> None:
    host, port = capped_server
    base = f"http://{host}:{port}"
    # A body the route refuses quickly (415): a full upload that holds its slot only for a moment.
    quick = {"files": {"file": ("a", b"not a photo")}, "timeout": 15}
    held: list[socket.socket] = []
    # The key known and a database connection open first: on a loaded machine the held uploads' first key check
    # could otherwise wait past the pool timeout on a cold pool and be answered 503, never holding a slot.
    assert httpx.get(f"{base}/v1/users", headers=key(installation, "read"), timeout=15).status_code == 200
    try:
        for _ in range(2):  # two uploads that send their first bytes, then wait
            connection = raw_request(capped_server, upload_head("/v1/search", 100_000, key(installation, "read")))
            connection.sendall(FILE_PART + b"x" * 4000)
            held.append(connection)
        third = None
        for _ in range(50):  # until the server has counted both held uploads
            third = httpx.post(f"{base}/v1/search", headers=key(installation, "read"), **quick)  # type: ignore[arg-type]
            if third.status_code == 429:
                break
            time.sleep(0.1)
        assert third is not None and third.status_code == 429, third.text if third else None
        assert third.json()["code"] == "too_many_uploads" and int(third.headers["retry-after"]) > 0
        # The cap is per key: another key uploads meanwhile; requests without a body are not uploads.
        other = httpx.post(f"{base}/v1/search", headers=key(installation, "write"), **quick)  # type: ignore[arg-type]
        assert other.status_code == 415
        assert httpx.get(f"{base}/v1/users", headers=key(installation, "read"), timeout=15).status_code == 200
    finally:
        for connection in held:
            connection.close()
    # A client that went away gives its slot back.
    answer = None
    for _ in range(50):
        answer = httpx.post(f"{base}/v1/search", headers=key(installation, "read"), **quick)  # type: ignore[arg-type]
        if answer.status_code != 429:
            break
        time.sleep(0.1)
    assert answer is not None and answer.status_code == 415, answer.text if answer else None
