"""Real 429 and 503 answers of the API, retried by the client after the answer's Retry-After: a key with its one
allowed upload in flight (FECAPASS_MAX_UPLOADS_PER_KEY=1), and object storage gone (a TCP proxy cut)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from fecapass_client import Fecapass, RateLimited, Unavailable

from tests.api.conftest import new_email, photo, raw_request
from tests.api.robust_support import TcpProxy
from tests.client.conftest import ClientInstallation, Recording, served


def stall_an_upload(url: str, key: str) -> socket.socket:
    """An upload that stops after its headers: the key's one upload in flight until the socket is closed.
    Returns once the API counts it (a probe with the same key is refused), so no test races it."""
    address = urlsplit(url)
    stalled = raw_request(
        (address.hostname or "", address.port or 0),
        f"POST /v1/detect HTTP/1.1\nHost: x\nX-API-Key: {key}\nContent-Type: multipart/form-data; boundary=b\n"
        "Content-Length: 100000",
        b"--b\r\n",
    )
    for _ in range(100):  # bounded: 10 s at most
        probe = httpx.post(f"{url}/v1/detect", headers={"X-API-Key": key}, content=b"x", timeout=10)
        if probe.status_code == 429:
            return stalled
        time.sleep(0.1)
    stalled.close()
    raise AssertionError("the stalled upload was never counted")


def test_too_many_uploads_is_retried_after_retry_after(client_installation: ClientInstallation) -> None:
    key = client_installation.new_key("read")
    queued = client_installation.queued()
    with served(client_installation.config(max_uploads_per_key="1")) as url:
        stalled = stall_an_upload(url, key)
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            stalled.close()  # the other upload ends while this client waits
            time.sleep(seconds)

        transport = Recording()
        with Fecapass(url, key, transport=transport) as api:
            api._sleep = sleep
            job = api.detect(photo(seed=51))
    assert transport.statuses == [429, 202]
    assert slept == [2.0]  # the API's Retry-After for too_many_uploads
    assert job.kind == "detect" and client_installation.queued() - queued == 1


def test_object_storage_down_is_retried_and_then_reported(client_installation: ClientInstallation) -> None:
    s3 = TcpProxy(int(client_installation.env["FECAPASS_S3_ENDPOINT"].rsplit(":", 1)[1]))
    """An enroll's photo goes to S3 (a search's stays in Redis): with S3 cut, the API answers 503."""
    key = client_installation.new_key("write")
    queued = client_installation.queued()
    try:
        with served(client_installation.config(s3_endpoint=f"127.0.0.1:{s3.port}")) as url:
            with Fecapass(url, key) as setup:
                user = setup.create_user(new_email("s3-down"))
            s3.cut()
            slept: list[float] = []

            def back_up(seconds: float) -> None:
                slept.append(seconds)
                s3.restore()  # storage returns while the client waits: no need to wait the seconds here

            transport = Recording()
            with Fecapass(url, key, transport=transport) as api:
                api._sleep = back_up
                job = api.enroll(user.id, photo(seed=61))
            assert transport.statuses == [503, 202] and slept == [5.0]  # dependency_unavailable's Retry-After
            assert client_installation.queued() - queued == 1

            s3.cut()
            transport = Recording()
            with Fecapass(url, key, max_retries=2, transport=transport) as api:
                retries: list[float] = []
                api._sleep = retries.append
                with pytest.raises(Unavailable) as down:
                    api.enroll(user.id, photo(seed=62))
            assert transport.statuses == [503, 503, 503] and retries == [5.0, 5.0]
            assert (down.value.code, down.value.retry_after) == ("dependency_unavailable", 5.0)
            assert client_installation.queued() - queued == 1
    finally:
        s3.close()
    assert job.state == "queued"


def test_retries_stop_at_max_retries_zero(client_installation: ClientInstallation) -> None:
    """max_retries=0: the 429 itself is what the caller gets, with its Retry-After."""
    key = client_installation.new_key("read")
    with served(client_installation.config(max_uploads_per_key="1")) as url:
        stalled = stall_an_upload(url, key)
        try:
            with Fecapass(url, key, max_retries=0) as api, pytest.raises(RateLimited) as limited:
                api.search(photo(seed=71))
        finally:
            stalled.close()
    assert (limited.value.status, limited.value.code, limited.value.retry_after) == (429, "too_many_uploads", 2.0)
