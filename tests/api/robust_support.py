"""In-process API against the real test servers, for the outage, idempotency and limit tests: the app and its
lifespan in this process (httpx's ASGI transport), and TCP proxies in front of the real servers, so one of them
can be made unreachable for one app without stopping it for the rest of the session."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import redis
from fastapi import FastAPI
from PIL import Image

from common import clients
from common.db.main_repository import MainRepository
from common.objects import ObjectStore
from common.settings import (
    ApiSettings,
    DatabaseSettings,
    ModelSettings,
    PipelineSettings,
    RedisSettings,
    S3Settings,
)
from ingest_api.app import create_app
from ingest_api.config import ApiConfig
from operations.services import MAIN_DB, VECTOR_DB, LocalServices, free_port

# Redis database of these tests: not the e2e stage processes' (0), nor the runner tests' (15).
API_TEST_DB = 13


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a real server. ``cut()`` is the server going away (new connections refused,
    open ones dropped); ``restore()`` brings it back on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def api_config(
    services: LocalServices,
    *,
    postgres_port: int | None = None,
    redis_port: int | None = None,
    s3_port: int | None = None,
    bucket: str | None = None,
    redis: dict[str, Any] | None = None,
    pipeline: dict[str, Any] | None = None,
    api: dict[str, Any] | None = None,
) -> ApiConfig:
    """The API's settings for the test servers, each optionally reached through a proxy's port."""
    pg = postgres_port or services.postgres_port

    def dsn(database: str) -> str:
        return services.dsn(database).replace(f":{services.postgres_port}/", f":{pg}/")

    return ApiConfig(
        redis=RedisSettings(
            redis_url=services.redis_url.replace(
                f":{services.valkey_port}/0", f":{redis_port or services.valkey_port}/{API_TEST_DB}"
            ),
            **(redis or {}),
        ),
        s3=S3Settings(
            s3_endpoint=f"127.0.0.1:{s3_port or services.s3_port}",
            s3_access_key=services.credentials.s3_access_key,
            s3_secret_key=services.credentials.s3_secret_key,
            s3_bucket=bucket or services.bucket,
        ),
        database=DatabaseSettings(
            main_db_dsn=dsn(MAIN_DB), vector_db_dsn=dsn(VECTOR_DB), db_pool_max=4, db_pool_timeout_seconds=0.5
        ),
        model=ModelSettings(),
        pipeline=PipelineSettings(**(pipeline or {})),
        api=ApiSettings(**{"orphan_sweep_seconds": 0, **(api or {})}),
    )


@contextlib.asynccontextmanager
async def running_app(config: ApiConfig) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan run, and a client that reaches it in-process. App errors come back as the
    answers the server would send (a 500 is a status to assert on, not an exception in the test)."""
    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=120) as client:
            yield app, client


def create_api_key(services: LocalServices, scope: str) -> str:
    return MainRepository.at(services.dsn(MAIN_DB)).create_api_key("api-robust-tests", scope).key


def jpeg(seed: int = 0, size: tuple[int, int] = (96, 80)) -> bytes:
    """A small real photo-like JPEG (noise), different per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def own_bucket(services: LocalServices, bucket: str) -> ObjectStore:
    settings = S3Settings(
        s3_endpoint=services.s3_endpoint,
        s3_access_key=services.credentials.s3_access_key,
        s3_secret_key=services.credentials.s3_secret_key,
        s3_bucket=bucket,
    )
    store = ObjectStore(clients.minio_client(settings), bucket)
    store.ensure_bucket()
    store.delete_prefix("")
    return store


def valkey_client(services: LocalServices) -> redis.Redis:
    """The API tests' Redis database, emptied."""
    client = redis.Redis(port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password)
    client.flushdb()
    return client
