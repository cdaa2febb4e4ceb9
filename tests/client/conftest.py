"""The Python client (clients/python) against the real API: create_app under uvicorn on a loopback port, on an
installation of its own (databases, Redis database, bucket) on the test run's real servers. No stage runs and no
model is needed: jobs stay queued (tests/e2e/test_client.py waits on real ones)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psycopg
import pytest
import redis

from common import clients
from common.db.main_repository import MainRepository
from common.objects import ObjectStore
from ingest_api.config import ApiConfig
from operations.services import LocalServices
from schemas.jobs import JOB_KEY_PREFIX
from schemas.streams import Stage
from tests.api.conftest import NO_MODELS, Installation, api_config, serving
from tests.e2e.conftest import fresh_installation

REDIS_DB = 9  # this installation's: no stage process of the other tests reads its streams
# Small enough that a test can send a photo over it without building megabytes.
MAX_UPLOAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ClientInstallation:
    env: dict[str, str]
    keys: dict[str, str]  # "read", "write", "admin", "revoked" -> key
    redis: redis.Redis
    store: ObjectStore

    def config(self, **settings: str) -> ApiConfig:
        return api_config(self.env, **settings)

    @property
    def main(self) -> MainRepository:
        return MainRepository.at(self.env["FECAPASS_MAIN_DB_DSN"])

    def as_api_installation(self) -> Installation:
        """This installation as tests/api's helpers take it (faces and clusters made as the stages make them)."""
        return Installation(self.env, self.main, self.store, self.redis, self.keys)

    def new_key(self, scope: str = "write", collection_ids: list[int] | None = None) -> str:
        return self.main.create_api_key("client-tests", scope, collection_ids).key

    def sql(self, query: str, *args: object) -> list[tuple[object, ...]]:
        with psycopg.connect(self.env["FECAPASS_MAIN_DB_DSN"]) as conn:
            return conn.execute(query, args).fetchall()

    def queued(self) -> int:
        """Jobs on the detect stream: what the uploads put in the pipeline."""
        return int(self.redis.xlen(Stage.DETECT.stream))

    def job_hashes(self) -> int:
        return len(list(self.redis.scan_iter(f"{JOB_KEY_PREFIX}*")))

    def originals(self) -> int:
        return len(self.store.keys("originals/"))

    def users_with_email(self, email: str) -> int:
        with psycopg.connect(self.env["FECAPASS_MAIN_DB_DSN"]) as conn:
            row = conn.execute("SELECT count(*) FROM users WHERE lower(email) = lower(%s)", (email,)).fetchone()
        assert row is not None
        return int(row[0])


@pytest.fixture(scope="session")
def client_installation(services: LocalServices) -> Iterator[ClientInstallation]:
    env = {
        **fresh_installation(services, "client", redis_db=REDIS_DB),
        "FECAPASS_MODEL_PACK": "buffalo_sc_lite",  # described by name only: its files are nowhere here
        "FECAPASS_MODEL_ROOT": str(NO_MODELS),
        "FECAPASS_MAX_WAIT_SECONDS": "0",  # no stage runs: never hold a request open
        "FECAPASS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    main = MainRepository.at(env["FECAPASS_MAIN_DB_DSN"])
    revoked = main.create_api_key("client-tests-revoked", "write")
    assert main.revoke_api_key(revoked.row.id)
    keys = {scope: main.create_api_key(f"client-tests-{scope}", scope).key for scope in ("read", "write", "admin")}
    config = api_config(env)
    store = ObjectStore(clients.minio_client(config.s3), config.s3.s3_bucket)
    client = redis.Redis.from_url(config.redis.redis_url)
    yield ClientInstallation(env, {**keys, "revoked": revoked.key}, client, store)
    client.close()


@contextmanager
def served(config: ApiConfig) -> Iterator[str]:
    """The API under uvicorn on a free loopback port, as `fecapass api` serves it; yields its base URL."""
    with serving(config) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="session")
def base_url(client_installation: ClientInstallation) -> Iterator[str]:
    with served(client_installation.config()) as url:
        yield url


class Recording(httpx.BaseTransport):
    """A real HTTP transport that remembers every request and answer; ``lose_answers`` first answers are
    thrown away after the server sent them (the connection broke on the way back)."""

    def __init__(self, lose_answers: int = 0, on_answer: Callable[[httpx.Response], None] | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []
        self.lose_answers = lose_answers
        self.on_answer = on_answer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self.inner.handle_request(request)
        response.read()
        self.statuses.append(response.status_code)
        if self.on_answer is not None:
            self.on_answer(response)
        if self.lose_answers > 0:
            self.lose_answers -= 1
            raise httpx.ReadError("connection reset by peer (the answer was lost)", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncRecording(httpx.AsyncBaseTransport):
    """``Recording`` for the async client."""

    def __init__(self, lose_answers: int = 0) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []
        self.statuses: list[int] = []
        self.lose_answers = lose_answers

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = await self.inner.handle_async_request(request)
        await response.aread()
        self.statuses.append(response.status_code)
        if self.lose_answers > 0:
            self.lose_answers -= 1
            raise httpx.ReadError("connection reset by peer (the answer was lost)", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
