"""Real servers for the whole run: PostgreSQL + pgvector, Valkey and an S3 endpoint on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import redis
from numpy.typing import ArrayLike

from common import clients
from common.db.migrate import migrate_all
from common.job_bytes import JobBytes
from common.objects import ObjectStore
from common.settings import DatabaseSettings, S3Settings
from common.transient import TransientStore
from operations.services import MAIN_DB, VECTOR_DB, LocalServices


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServices]:
    data_dir: Path = tmp_path_factory.mktemp("services")
    running = LocalServices(data_dir, durable=False)
    running.start()
    migrate_all(running.dsn(MAIN_DB), running.dsn(VECTOR_DB))
    yield running
    running.stop()


def unit(vectors: ArrayLike) -> np.ndarray:
    """``vectors`` (one, or one a row) scaled to length 1, as float32: as embeddings are stored and searched."""
    array = np.asarray(vectors)
    result: np.ndarray = (array / np.linalg.norm(array, axis=-1, keepdims=True)).astype(np.float32)
    return result


def new_database(services: LocalServices, name: str) -> str:
    """An empty database ``name`` on the test server (one a previous run left is dropped first); its DSN."""
    with psycopg.connect(services.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return services.dsn(name)


def migrated_databases(services: LocalServices, name: str) -> DatabaseSettings:
    """A main and a vector database of their own, ``fecapass_{name}_main`` and ``fecapass_{name}_vector``, new and
    migrated: what is stored there (packs, galleries, collections) reaches no other test's data, nor theirs it."""
    main_dsn = new_database(services, f"fecapass_{name}_main")
    vector_dsn = new_database(services, f"fecapass_{name}_vector")
    migrate_all(main_dsn, vector_dsn)
    return DatabaseSettings(main_db_dsn=main_dsn, vector_db_dsn=vector_dsn)


@pytest.fixture(scope="session")
def object_store(services: LocalServices) -> ObjectStore:
    """The test S3 server's bucket, through the product's client."""
    settings = S3Settings(
        s3_endpoint=services.s3_endpoint,
        s3_access_key=services.credentials.s3_access_key,
        s3_secret_key=services.credentials.s3_secret_key,
        s3_bucket=services.bucket,
    )
    return ObjectStore(clients.minio_client(settings), services.bucket)


@pytest.fixture(scope="session")
def service_env(services: LocalServices) -> dict[str, str]:
    return services.environment()


@pytest.fixture
def env(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The FECAPASS_* variables of the test servers, set in this process for settings classes to read."""
    for key, value in service_env.items():
        monkeypatch.setenv(key, value)
    return service_env


# Stage processes of the end-to-end tests live for the whole session on database 0; tests that drive a runner
# themselves use a database of their own, or those processes would take their entries.
RUNNER_TEST_DB = 15


def redis_client_url(services: LocalServices) -> str:
    return services.redis_url.rsplit("/", 1)[0] + f"/{RUNNER_TEST_DB}"


@pytest.fixture
def redis_client(services: LocalServices) -> Iterator[redis.Redis]:
    """A clean Redis for each test that takes it: streams and job hashes are global names."""
    client = redis.Redis.from_url(redis_client_url(services))
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def job_bytes(object_store: ObjectStore, redis_client: redis.Redis) -> JobBytes:
    """What the stages read and write photos and crops through: the test S3 bucket and the test Redis."""
    return JobBytes(object_store, TransientStore(redis_client, ttl_seconds=3600))


@pytest.fixture(autouse=True)
def _process_logging_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests call the CLI's main() in this process: it would configure structlog for the whole test run (loggers
    cached on first use, bound to a captured stream), and later tests' capture_logs would see nothing."""
    from operations import cli

    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)


@pytest.fixture(autouse=True)
def _isolated_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test in an empty folder, so a developer's .env never reaches the settings under test."""
    monkeypatch.chdir(tmp_path)
