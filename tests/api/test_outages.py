"""Every outage is a 503, and no photo is kept for a job that does not exist.

The app runs in this process against the real servers, each reached through a TCP proxy that the test cuts:
PostgreSQL, Redis or S3 goes away for this app only. Every route must then answer 503 `dependency_unavailable`
with Retry-After where it needs the store that is down, and never 500 anywhere.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
import pytest
import redis
import redis.asyncio as aioredis
import structlog

import ingest_api.backpressure
import ingest_api.sweeper
from common import clients
from common.db.main_repository import MainRepository
from common.objects import original_key
from common.settings import DatabaseSettings
from ingest_api.sweeper import OrphanSweeper
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from schemas.jobs import job_key
from tests.api.robust_support import (
    API_TEST_DB,
    TcpProxy,
    api_config,
    create_api_key,
    jpeg,
    own_bucket,
    running_app,
)

DEPENDENCIES = ("postgres", "redis", "s3")


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str  # {user}, {doomed_user}, {face}, {job} filled in per run
    needs: frozenset[str]  # the stores the route itself uses, past the API-key check (PostgreSQL)
    json: dict[str, Any] | None = None
    photo: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def route(name: str, method: str, path: str, *needs: str, **kwargs: Any) -> Route:
    return Route(name, method, path, frozenset(needs), **kwargs)


ROUTES = [
    route("create user", "POST", "/v1/users", "postgres", json={"email": "x@example.com"}),
    route("list users", "GET", "/v1/users", "postgres"),
    route("get user", "GET", "/v1/users/{user}", "postgres"),
    route("update user", "PATCH", "/v1/users/{user}", "postgres", json={"full_name": "Renamed"}),
    route("delete user", "DELETE", "/v1/users/{doomed_user}", "postgres"),
    route("enroll", "POST", "/v1/users/{user}/faces", "postgres", "redis", "s3", photo=True),
    route("list faces", "GET", "/v1/users/{user}/faces", "postgres"),
    route("get face", "GET", "/v1/faces/{face}", "postgres"),
    route("delete face", "DELETE", "/v1/faces/{face}", "postgres", "s3"),
    # A search's, verify's or detect's photo is held in Redis, not S3 (common/transient.py): S3 down, they still work.
    route("search", "POST", "/v1/search", "redis", photo=True),
    route("verify", "POST", "/v1/verify?user_id={user}", "postgres", "redis", photo=True),
    route("detect", "POST", "/v1/detect", "redis", photo=True),
    route("idempotent search", "POST", "/v1/search", "redis", photo=True, headers={"Idempotency-Key": "k1"}),
    route("job", "GET", "/v1/jobs/{job}", "redis"),
]


@pytest.fixture
def proxies(services: LocalServices) -> Iterator[dict[str, TcpProxy]]:
    redis.Redis(port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password).flushdb()
    running = {
        "postgres": TcpProxy(services.postgres_port),
        "redis": TcpProxy(services.valkey_port),
        "s3": TcpProxy(services.s3_port),
    }
    yield running
    for proxy in running.values():
        proxy.close()


def make_user(services: LocalServices, with_face: bool) -> tuple[int, int | None]:
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        row = conn.execute(
            "INSERT INTO users (email, full_name) VALUES (%s, 'Outage Test') RETURNING id",
            (f"{uuid.uuid4().hex}@example.com",),
        ).fetchone()
        assert row is not None
        face = None
        if with_face:
            job = uuid.uuid4().hex
            found = conn.execute(
                "INSERT INTO faces (user_id, job_id, image_key, crop_key, box, det_score, model_pack)"
                " VALUES (%s, %s, %s, %s, %s, 0.9, 'dlib') RETURNING id",
                (row[0], job, original_key(job), f"crops/{job}/0.png", [1.0, 2.0, 30.0, 40.0]),
            ).fetchone()
            assert found is not None
            face = int(found[0])
    return int(row[0]), face


async def call(client: httpx.AsyncClient, target: Route, ids: dict[str, Any], key: str) -> httpx.Response:
    files = {"file": ("photo.jpg", jpeg(seed=7))} if target.photo else None
    return await client.request(
        target.method,
        target.path.format(**ids),
        json=target.json,
        files=files,
        headers={"X-API-Key": key, **target.headers},
    )


async def until_ok(client: httpx.AsyncClient, path: str, key: str) -> httpx.Response:
    """The API recovers on its own once the store is back (pools reconnect with backoff): bounded wait."""
    response = await client.get(path, headers={"X-API-Key": key})
    for _ in range(60):
        if response.status_code == 200:
            break
        await asyncio.sleep(0.5)
        response = await client.get(path, headers={"X-API-Key": key})
    return response


@pytest.mark.parametrize("down", DEPENDENCIES)
def test_every_route_answers_503_with_retry_after_while_a_store_is_down(
    services: LocalServices, proxies: dict[str, TcpProxy], down: str
) -> None:
    config = api_config(
        services,
        postgres_port=proxies["postgres"].port,
        redis_port=proxies["redis"].port,
        s3_port=proxies["s3"].port,
    )
    user, face = make_user(services, with_face=True)
    doomed_user, _ = make_user(services, with_face=False)
    warm_key = create_api_key(services, "write")
    fresh_key = create_api_key(services, "write")  # never used before the outage: its check needs PostgreSQL

    async def scenario() -> tuple[dict[str, httpx.Response], dict[str, httpx.Response], httpx.Response, int]:
        async with running_app(config) as (_, client):
            queued = await client.post(
                "/v1/detect", files={"file": ("a.jpg", jpeg(seed=1))}, headers={"X-API-Key": warm_key}
            )
            assert queued.status_code == 202, queued.text
            ids = {"user": user, "doomed_user": doomed_user, "face": face, "job": queued.json()["job_id"]}
            proxies[down].cut()
            try:
                with_fresh_key = {r.name: await call(client, r, ids, fresh_key) for r in ROUTES}
                with_known_key = {r.name: await call(client, r, ids, warm_key) for r in ROUTES}
                ready = await client.get("/health/ready")
            finally:
                proxies[down].restore()
            recovered = await until_ok(client, f"/v1/jobs/{ids['job']}", fresh_key)
            return with_fresh_key, with_known_key, ready, recovered.status_code

    with_fresh_key, with_known_key, ready, recovered = asyncio.run(scenario())

    for key_kind, answers in (("fresh key", with_fresh_key), ("known key", with_known_key)):
        for target in ROUTES:
            response = answers[target.name]
            needed = down in target.needs or (down == "postgres" and key_kind == "fresh key" and target.name != "job")
            where = f"{target.name} with {down} down ({key_kind}): {response.status_code} {response.text}"
            assert response.status_code != 500, where
            if needed:
                assert response.status_code == 503, where
                assert response.headers["content-type"] == "application/problem+json", where
                assert response.json()["code"] == "dependency_unavailable", where
                assert int(response.headers["Retry-After"]) > 0, where
            else:  # what works without the store keeps working (or, for the job route, may need a key check)
                assert response.status_code < 500 or response.json()["code"] == "dependency_unavailable", where
    assert ready.status_code == 503
    assert recovered == 200


def test_a_submit_that_cannot_queue_its_job_deletes_its_photo(
    services: LocalServices, proxies: dict[str, TcpProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis goes away between an enroll photo's put to S3 and the MULTI: the upload is a 503 and the photo is
    deleted."""
    bucket = "fecapass-api-robust-unqueued"
    store = own_bucket(services, bucket)
    # The backlog figure, read once, stays fresh: the second upload reaches the put without asking Redis.
    monkeypatch.setattr(ingest_api.backpressure, "REFRESH_SECONDS", 3600.0)
    config = api_config(services, redis_port=proxies["redis"].port, bucket=bucket)
    key = create_api_key(services, "write")
    user, _ = make_user(services, with_face=False)
    enroll = f"/v1/users/{user}/faces"

    async def scenario() -> tuple[httpx.Response, httpx.Response, list[dict[str, Any]]]:
        async with running_app(config) as (_, client):
            first = await client.post(enroll, files={"file": ("a.jpg", jpeg(1))}, headers={"X-API-Key": key})
            proxies["redis"].cut()
            try:
                with structlog.testing.capture_logs() as logs:
                    second = await client.post(enroll, files={"file": ("b.jpg", jpeg(2))}, headers={"X-API-Key": key})
            finally:
                proxies["redis"].restore()
            return first, second, logs

    first, second, logs = asyncio.run(scenario())
    assert first.status_code == 202, first.text
    assert second.status_code == 503 and second.json()["code"] == "dependency_unavailable", second.text
    deleted = [entry for entry in logs if entry["event"] == "api.orphan_deleted"]
    assert len(deleted) == 1, logs  # the put happened (then the MULTI failed): the cleanup path ran
    # Counted in the bucket: the queued job's photo, and nothing of the refused one.
    assert store.keys("originals/") == [original_key(first.json()["job_id"])]


def test_the_orphan_sweep_deletes_only_old_originals_without_a_job_or_a_face(
    services: LocalServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = own_bucket(services, "fecapass-api-robust-sweep")
    monkeypatch.setattr(ingest_api.sweeper, "PAGE", 2)  # several pages from a handful of objects
    sync_redis = redis.Redis(port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password)
    sync_redis.flushdb()
    orphan, orphan_second, queued, enrolled = (uuid.uuid4().hex for _ in range(4))
    user, _ = make_user(services, with_face=False)
    with psycopg.connect(services.dsn(MAIN_DB)) as conn:
        conn.execute(
            "INSERT INTO faces (user_id, job_id, image_key, crop_key, box, det_score, model_pack)"
            " VALUES (%s, %s, %s, %s, %s, 0.9, 'dlib')",
            (user, enrolled, original_key(enrolled), f"crops/{enrolled}/0.png", [1.0, 2.0, 30.0, 40.0]),
        )
    sync_redis.hset(job_key(queued), mapping={"state": "queued", "kind": "verify"})
    objects = {
        original_key(orphan): "deleted: no job, no face",
        original_key(orphan_second, 1): "deleted: the second photo of a verify nobody queued",
        original_key(queued): "kept: its job is queued",
        original_key(queued, 1): "kept: its job is queued",
        original_key(enrolled): "kept: a face row holds it",
        f"crops/{orphan}/0.png": "kept: not an original",
    }
    for name in objects:
        store.put(name, b"photo", "image/jpeg")
    pool = clients.main_db_pool(
        DatabaseSettings(main_db_dsn=services.dsn(MAIN_DB), vector_db_dsn=services.dsn(VECTOR_DB)), open_now=True
    )

    async def sweep(now: float) -> list[str]:
        client = aioredis.Redis(
            port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password
        )
        try:
            sweeper = OrphanSweeper(store, client, MainRepository(pool), orphan_after_seconds=3600, every_seconds=3600)
            return await sweeper.sweep(now=now)
        finally:
            await client.aclose()

    try:
        assert asyncio.run(sweep(time.time())) == []  # younger than the bound: a submit may still be queueing
        assert set(store.keys("")) == set(objects)
        deleted = asyncio.run(sweep(time.time() + 3601))
    finally:
        pool.close()
    expected_gone = {name for name, fate in objects.items() if fate.startswith("deleted")}
    assert set(deleted) == expected_gone
    assert set(store.keys("")) == set(objects) - expected_gone  # counted in the bucket, not from the answer


def test_the_sweep_deletes_nothing_when_most_old_originals_look_orphaned(
    services: LocalServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API pointed at the wrong (or an empty, restored) main database or Redis must not wipe the photos."""
    store = own_bucket(services, "fecapass-api-robust-sweep-guard")
    monkeypatch.setattr(ingest_api.sweeper, "SUSPICIOUS_ORPHANS", 3)
    redis.Redis(port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password).flushdb()
    names = [original_key(uuid.uuid4().hex) for _ in range(6)]  # faces of another database: none here
    for name in names:
        store.put(name, b"photo", "image/jpeg")
    pool = clients.main_db_pool(
        DatabaseSettings(main_db_dsn=services.dsn(MAIN_DB), vector_db_dsn=services.dsn(VECTOR_DB)), open_now=True
    )

    async def sweep() -> list[str]:
        client = aioredis.Redis(
            port=services.valkey_port, db=API_TEST_DB, password=services.credentials.valkey_password
        )
        try:
            sweeper = OrphanSweeper(store, client, MainRepository(pool), orphan_after_seconds=3600, every_seconds=1)
            return await sweeper.sweep(now=time.time() + 3601)
        finally:
            await client.aclose()

    try:
        with structlog.testing.capture_logs() as logs:
            assert asyncio.run(sweep()) == []
    finally:
        pool.close()
    assert sorted(store.keys("")) == sorted(names)
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["api.orphan_sweep_refused"]


@pytest.mark.parametrize("factory", [clients.main_db_pool, clients.vector_db_pool])
def test_a_session_frozen_inside_a_transaction_loses_its_locks_to_the_next_one(
    services: LocalServices, factory: Any
) -> None:
    """A process stopped mid-transaction (SIGSTOP, a paused VM) must not hold its row locks until it is killed: the
    consumer that claims its entries would wait on them as long. PostgreSQL ends such a session after
    FECAPASS_DB_IDLE_IN_TRANSACTION_SECONDS, and the lock goes with it."""
    settings = DatabaseSettings(
        main_db_dsn=services.dsn(MAIN_DB), vector_db_dsn=services.dsn(VECTOR_DB), db_idle_in_transaction_seconds=1
    )
    table = f"frozen_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.dsn(MAIN_DB), autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
        setup.execute(f"INSERT INTO {table} VALUES (1)")
    with factory(settings, open_now=True) as pool, pool.connection() as frozen:
        if factory is clients.vector_db_pool:  # the vector pool's DSN names the other database
            frozen.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
            frozen.execute(f"INSERT INTO {table} VALUES (1)")
            frozen.commit()
        frozen.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE")  # and then nothing: the process froze
        dsn = services.dsn(VECTOR_DB if factory is clients.vector_db_pool else MAIN_DB)
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("SET lock_timeout = '20s'")  # without the session timeout: a LockNotAvailable
            assert other.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE").fetchone() == (1,)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):  # woken, it finds its session ended
            frozen.execute("SELECT 1")


@pytest.mark.parametrize("factory", [clients.main_db_pool, clients.vector_db_pool])
def test_a_stage_session_frozen_inside_a_pipeline_loses_its_locks_to_the_next_one(
    services: LocalServices, factory: Any
) -> None:
    """Frozen with a pipeline's statements sent and its Sync not yet (psycopg's pipeline mode, as the index stage's
    add_face and serve_face write): PostgreSQL counts the session active, not idle in transaction, so the idle
    timeout never ends it. A stage pool's transaction timeout does, and the lock goes with it."""
    settings = DatabaseSettings(
        main_db_dsn=services.dsn(MAIN_DB),
        vector_db_dsn=services.dsn(VECTOR_DB),
        db_idle_in_transaction_seconds=1,
        db_stage_transaction_seconds=2,
    )
    table = f"frozen_{uuid.uuid4().hex[:8]}"
    dsn = services.dsn(VECTOR_DB if factory is clients.vector_db_pool else MAIN_DB)
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    with factory(settings, open_now=True, stage=True) as pool, pool.connection() as frozen:
        assert frozen.execute("SHOW transaction_timeout").fetchone() == ("2s",)
        frozen.commit()
        pipeline = frozen.pipeline()
        pipeline.__enter__()
        frozen.execute(f"INSERT INTO {table} VALUES (1)")
        frozen.pgconn.flush()  # sent; and then nothing: the process froze before the pipeline's Sync
        with psycopg.connect(dsn, autocommit=True) as other:
            activity = "SELECT state FROM pg_stat_activity WHERE pid = %s AND backend_xid IS NOT NULL"
            deadline = time.monotonic() + 10
            while other.execute(activity, (frozen.info.backend_pid,)).fetchone() is None:  # the insert ran
                assert time.monotonic() < deadline, "the frozen session's insert never ran"
                time.sleep(0.05)
            assert other.execute(activity, (frozen.info.backend_pid,)).fetchone() == ("active",)
            other.execute("SET lock_timeout = '20s'")  # without the transaction timeout: a LockNotAvailable
            started = time.monotonic()
            other.execute(f"INSERT INTO {table} VALUES (1) ON CONFLICT DO NOTHING")
            assert time.monotonic() - started < 10
        with pytest.raises(psycopg.Error):  # woken, it finds its session ended
            pipeline.__exit__(None, None, None)


def test_the_api_pools_let_a_long_transaction_run(services: LocalServices) -> None:
    """An erasure of a large collection is one long transaction: only the stages' pools end long ones."""
    settings = DatabaseSettings(main_db_dsn=services.dsn(MAIN_DB), vector_db_dsn=services.dsn(VECTOR_DB))
    for factory in (clients.main_db_pool, clients.vector_db_pool):
        with factory(settings, open_now=True) as pool, pool.connection() as conn:
            assert conn.execute("SHOW transaction_timeout").fetchone() == ("0",)
