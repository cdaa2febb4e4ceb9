"""Certificates are verified for an https API; a client of an http API skips loading the CA bundle it would never
use (its requests all go to paths under the base URL, no redirect followed)."""

from __future__ import annotations

import asyncio
import ssl

import httpx
import pytest
from fecapass_client import AsyncFecapass, Fecapass
from fecapass_client._session import verifies_tls


def pool_context(http: httpx.Client | httpx.AsyncClient) -> ssl.SSLContext:
    context = http._transport._pool._ssl_context  # type: ignore[union-attr]  # httpx's own, no public accessor
    assert isinstance(context, ssl.SSLContext)
    return context


@pytest.mark.parametrize("url", ["https://faces.example.com", "HTTPS://faces.example.com:8443/api", "faces:8000"])
def test_an_https_api_or_one_without_a_plain_http_scheme_is_verified(url: str) -> None:
    assert verifies_tls(url)
    sync = Fecapass(url, "key")
    try:
        assert pool_context(sync._http).verify_mode is ssl.CERT_REQUIRED
        assert pool_context(sync._http).check_hostname
    finally:
        sync.close()


def test_the_async_client_verifies_an_https_api_too() -> None:
    async def scenario() -> ssl.VerifyMode:
        async with AsyncFecapass("https://faces.example.com", "key") as client:
            return pool_context(client._http).verify_mode

    assert asyncio.run(scenario()) is ssl.CERT_REQUIRED


def test_a_plain_http_api_loads_no_certificates() -> None:
    assert not verifies_tls("http://127.0.0.1:8000") and not verifies_tls("HTTP://localhost")
    sync = Fecapass("http://127.0.0.1:8000", "key")
    try:
        assert pool_context(sync._http).cert_store_stats()["x509_ca"] == 0
    finally:
        sync.close()
