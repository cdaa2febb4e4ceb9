"""Client factories. Callers own the lifetime: the FastAPI lifespan or the stage runner opens and closes."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import certifi
import redis
import redis.asyncio as aioredis
import urllib3
from minio import Minio
from pgvector.psycopg import register_vector
from psycopg import Connection
from psycopg_pool import ConnectionPool
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff

from common.db import TRANSACTION_TIMEOUT_SINCE
from common.job_bytes import JobBytes
from common.objects import ObjectStore
from common.settings import DatabaseSettings, RedisSettings, S3Settings
from common.transient import TransientStore


def redis_client(settings: RedisSettings) -> redis.Redis:
    # No socket timeout: a stage's XREADGROUP blocks for FECAPASS_BLOCK_MS, which may be long. A dead server
    # still fails the connect quickly.
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=False,
        health_check_interval=30,
        socket_connect_timeout=settings.redis_socket_timeout_seconds,
    )


def async_redis_client(settings: RedisSettings) -> aioredis.Redis:
    """The API's client. A blocking pool: when every connection is busy (hundreds of requests waiting for their
    jobs) a command waits for one, up to the pool timeout, instead of failing with MaxConnectionsError."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds,
        socket_timeout=settings.redis_socket_timeout_seconds,
        socket_connect_timeout=settings.redis_socket_timeout_seconds,
        health_check_interval=30,
        # A few quick tries ride out a blip; the default (ten, backing off to a second) kept a request for
        # seconds per command while Redis was down, where it should answer 503 at once.
        retry=AsyncRetry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=3),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def minio_client(settings: S3Settings, *, public: bool = False) -> Minio:
    """The S3 client; ``public`` gives one for presigning URLs at the endpoint clients can reach."""
    endpoint = settings.s3_public_endpoint if public and settings.s3_public_endpoint else settings.s3_endpoint
    secure = settings.s3_secure
    if "://" in endpoint:  # accept a URL as well as host:port
        parts = urlsplit(endpoint)
        endpoint, secure = parts.netloc, parts.scheme == "https"
    return Minio(
        endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=secure,
        region=settings.s3_region,
        http_client=_s3_http_client(),
    )


def object_store(settings: S3Settings) -> ObjectStore:
    return ObjectStore(minio_client(settings), settings.s3_bucket)


def job_bytes(s3: S3Settings, redis_settings: RedisSettings, transient_ttl_seconds: int) -> JobBytes:
    """A stage's photos and crops: S3 for kept ones, Redis for transient ones (common/job_bytes.py)."""
    return JobBytes(object_store(s3), TransientStore(redis_client(redis_settings), transient_ttl_seconds))


# Kept-alive connections to S3 per process: at least the API's worker threads (anyio's 40), or concurrent uploads
# past the pool open and discard a connection each (measured: a third of the ingest rate lost at 32 clients).
S3_CONNECTIONS = 64


def _s3_http_client() -> urllib3.PoolManager:
    # The SDK's default retries a refused connection five times with growing pauses: an upload would hang for
    # seconds while S3 is down. Two quick tries, then the caller answers 503 or the stage backs off.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=60.0),
        maxsize=S3_CONNECTIONS,
        cert_reqs="CERT_REQUIRED",
        ca_certs=certifi.where(),
        retries=urllib3.Retry(total=2, backoff_factor=0.1, status_forcelist=[500, 502, 503, 504]),
    )


def _session_settings(settings: DatabaseSettings, *, stage: bool) -> Callable[[Connection], None]:
    idle_ms = int(settings.db_idle_in_transaction_seconds * 1000)
    transaction_ms = int(settings.db_stage_transaction_seconds * 1000) if stage else 0

    def configure(conn: Connection) -> None:
        # SET, not the DSN's `options`: a DSN that brings options of its own keeps them.
        conn.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
        if transaction_ms and conn.info.server_version >= TRANSACTION_TIMEOUT_SINCE:  # older: the idle timeout only
            conn.execute(f"SET transaction_timeout = {transaction_ms}")
        conn.commit()

    return configure


def _vector_session_settings(settings: DatabaseSettings, *, stage: bool) -> Callable[[Connection], None]:
    session = _session_settings(settings, stage=stage)

    def configure(conn: Connection) -> None:
        register_vector(conn)
        session(conn)

    return configure


def main_db_pool(settings: DatabaseSettings, *, open_now: bool = False, stage: bool = False) -> ConnectionPool:
    """``stage``: a stage process's pool, whose transactions PostgreSQL ends after db_stage_transaction_seconds."""
    return ConnectionPool(
        settings.main_db_dsn.get_secret_value(),
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        open=open_now,
        name="main",
        configure=_session_settings(settings, stage=stage),
        # A connection broken by a database restart is replaced instead of failing a request; and a
        # request waits seconds, not the default 30, for a connection while the database is down.
        check=ConnectionPool.check_connection,
        timeout=settings.db_pool_timeout_seconds,
    )


def vector_db_pool(settings: DatabaseSettings, *, open_now: bool = False, stage: bool = False) -> ConnectionPool:
    """``stage``: as main_db_pool's."""
    return ConnectionPool(
        settings.vector_db_dsn.get_secret_value(),
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        configure=_vector_session_settings(settings, stage=stage),
        open=open_now,
        name="vector",
        check=ConnectionPool.check_connection,
        timeout=settings.db_pool_timeout_seconds,
    )
