"""The API in this process (create_app under TestClient, or under uvicorn in a thread where a test needs a real
socket) against the test run's real PostgreSQL, Valkey and S3. No model files: the configured pack's folder does
not exist, so these tests pass without ../shared."""

from __future__ import annotations

import io
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from common import clients
from common.db.main_repository import MainRepository
from common.objects import ObjectStore
from common.transient import BLOB_PREFIX
from ingest_api.app import create_app
from ingest_api.config import ApiConfig
from ingest_api.server import server_config
from operations.services import LocalServices, free_port
from schemas.streams import Stage
from tests.e2e.conftest import fresh_installation

REDIS_DB = 11  # an installation of its own: no stage process of the other tests reads its streams
NO_MODELS = Path("/nonexistent/fecapass-models")


def api_config(env: dict[str, str], **settings: str) -> ApiConfig:
    """The API's settings, read as `fecapass api` reads them, from ``env`` plus FECAPASS_<NAME> overrides."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**env, **{f"FECAPASS_{k.upper()}": v for k, v in settings.items()}}.items():
            patch.setenv(name, value)
        return ApiConfig.from_env()


@dataclass(frozen=True)
class Installation:
    env: dict[str, str]
    main: MainRepository
    store: ObjectStore
    redis: redis.Redis
    keys: dict[str, str]  # "read", "write", "admin", "revoked" -> key

    def config(self, **settings: str) -> ApiConfig:
        return api_config(self.env, **settings)

    def submitted(self) -> tuple[int, int]:
        """What uploads have left behind: stored photos (originals in S3, transient ones in Valkey) and events on the
        detect stream."""
        photos = len(self.store.keys("originals/")) + sum(1 for _ in self.redis.scan_iter(match=f"{BLOB_PREFIX}*"))
        return photos, int(self.redis.xlen(Stage.DETECT.stream))


@pytest.fixture(scope="session")
def installation(services: LocalServices) -> Iterator[Installation]:
    env = {
        **fresh_installation(services, "api", redis_db=REDIS_DB),
        "FECAPASS_MODEL_PACK": "buffalo_sc_lite",  # described by name only: its files are nowhere here
        "FECAPASS_MODEL_ROOT": str(NO_MODELS),
        "FECAPASS_MAX_WAIT_SECONDS": "0",  # no stage runs: never hold a request open
    }
    main = MainRepository.at(env["FECAPASS_MAIN_DB_DSN"])
    revoked = main.create_api_key("revoked-before-use", "write")
    assert main.revoke_api_key(revoked.row.id)
    keys = {scope: main.create_api_key(f"api-tests-{scope}", scope).key for scope in ("read", "write", "admin")}
    config = api_config(env)
    store = ObjectStore(clients.minio_client(config.s3), config.s3.s3_bucket)
    client = redis.Redis.from_url(config.redis.redis_url)
    yield Installation(env, main, store, client, {**keys, "revoked": revoked.key})
    client.close()


@pytest.fixture(scope="session")
def api(installation: Installation) -> Iterator[TestClient]:
    """The API with the default settings; no key sent unless a test adds one."""
    with TestClient(create_app(installation.config()), raise_server_exceptions=False) as client:
        yield client


def key(installation: Installation, scope: str) -> dict[str, str]:
    return {"X-API-Key": installation.keys[scope]}


@contextmanager
def serving(config: ApiConfig) -> Iterator[tuple[str, int]]:
    """The API under uvicorn, configured as `fecapass api` configures it, on a free port of 127.0.0.1."""
    port = free_port()
    config = replace(config, api=config.api.model_copy(update={"api_port": port, "api_host": "127.0.0.1"}))
    server = uvicorn.Server(server_config(config, create_app(config)))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    for _ in range(300):
        if server.started or not thread.is_alive():
            break
        time.sleep(0.1)
    assert server.started, "the API did not start within 30 s"
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(30)


def raw_request(address: tuple[str, int], head: str, body: bytes = b"") -> socket.socket:
    """A connection that has sent the request line and headers (and ``body``), and nothing more."""
    connection = socket.create_connection(address, timeout=30)
    connection.sendall((head.rstrip("\n").replace("\n", "\r\n") + "\r\n\r\n").encode() + body)
    return connection


def read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and (Content-Length) body of the answer, read without sending anything more."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def photo(size: int = 64, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A real image with no face in it: enough for everything the API checks before a stage runs."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def new_email(name: str, domain: str = "example.com") -> str:
    return f"{name}.{uuid.uuid4().hex[:8]}@{domain}"
