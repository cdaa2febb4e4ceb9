"""URLs handed to clients come from FECAPASS_PUBLIC_URL (or the API's own address), never from what a request
says about the host: a forged Host or X-Forwarded-* header cannot point a client's next request elsewhere."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from ingest_api.app import create_app
from ingest_api.server import server_config
from tests.api.conftest import Installation, key, photo, serving

pytestmark = pytest.mark.integration

FORGED = {
    "Host": "evil.example:666",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example:666",
    "X-Forwarded-For": "203.0.113.9",
    "Forwarded": "host=evil.example:666;proto=https",
}


def urls_of_a_job(client: TestClient | httpx.Client, installation: Installation) -> list[str]:
    headers = {**key(installation, "read"), **FORGED}
    submitted = client.post("/v1/search", files={"file": ("a.jpg", photo())}, headers=headers)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    again = client.get(f"/v1/jobs/{job_id}", headers=headers)
    assert again.status_code == 200
    urls = [submitted.headers["location"], submitted.json()["status_url"], again.json()["status_url"]]
    for url in urls:
        assert "evil.example" not in url and ":666" not in url
        assert url.endswith(f"/v1/jobs/{job_id}")
    return urls


@pytest.fixture
def public_api(installation: Installation) -> Iterator[TestClient]:
    config = installation.config(public_url="https://faces.example.com/fecapass/")
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


def test_urls_use_the_configured_public_url(public_api: TestClient, installation: Installation) -> None:
    for url in urls_of_a_job(public_api, installation):
        assert url.startswith("https://faces.example.com/fecapass/v1/jobs/")


def test_without_a_public_url_urls_use_the_api_address(api: TestClient, installation: Installation) -> None:
    for url in urls_of_a_job(api, installation):  # FECAPASS_API_HOST, FECAPASS_API_PORT defaults
        assert url.startswith("http://127.0.0.1:8000/v1/jobs/")


def test_the_real_server_ignores_forwarded_headers(installation: Installation) -> None:
    with serving(installation.config()) as (host, port), httpx.Client(base_url=f"http://{host}:{port}") as client:
        for url in urls_of_a_job(client, installation):
            assert url.startswith(f"http://127.0.0.1:{port}/v1/jobs/")


def test_proxy_headers_are_trusted_only_from_configured_proxies(installation: Installation) -> None:
    app = create_app(installation.config())
    default = server_config(installation.config(), app)
    assert default.proxy_headers is False  # uvicorn would otherwise believe 127.0.0.1
    trusted = server_config(installation.config(trusted_proxies="10.0.0.2, 10.1.0.0/16"), app)
    assert trusted.proxy_headers is True and trusted.forwarded_allow_ips == ["10.0.0.2", "10.1.0.0/16"]
