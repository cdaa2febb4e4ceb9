"""The whole product as processes: `fecapass api` and two `fecapass worker` processes per stage."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from common import clients
from common.db.main_repository import MainRepository
from common.objects import ObjectStore
from common.settings import S3Settings
from operations.installation import Installation
from operations.services import MAIN_DB, LocalServices
from schemas.streams import Stage
from tests.conftest import migrated_databases
from tests.shared_data import BASIC, MODEL_ROOT, PACK, labels, require_basic, require_pack

WORKERS_PER_STAGE = 2


@dataclass(kw_only=True)
class RunningPipeline(Installation):
    keys: dict[str, str] = field(default_factory=dict)  # scope -> key

    def client(self, scope: str = "write") -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=90, headers={"X-API-Key": self.keys[scope]})

    def handled_by(self, stage: Stage) -> dict[str, int]:
        """Entries each process of a stage finished, read from its structured log."""
        assert self.log_dir is not None
        counts = {}
        for name in self.processes:
            if name.startswith(stage.value):
                lines = (self.log_dir / f"{name}.log").read_text().splitlines()
                events = [json.loads(line) for line in lines if line.startswith("{")]
                counts[name] = sum(1 for e in events if e.get("event") in ("stage.handled", "stage.job_failed"))
        return counts


def create_key(services: LocalServices, scope: str, name: str = "tests") -> str:
    return create_key_in(services.dsn(MAIN_DB), scope, name)


def create_key_in(main_dsn: str, scope: str, name: str = "tests") -> str:
    return MainRepository.at(main_dsn).create_api_key(name, scope).key


def fresh_installation(services: LocalServices, name: str, redis_db: int) -> dict[str, str]:
    """Settings for an installation of its own on the shared servers: two new databases, a Redis database
    and a bucket, so that what its tests do cannot reach any other test's data."""
    bucket = "fecapass-" + name.lower().replace("_", "-")
    databases = migrated_databases(services, name)
    s3 = S3Settings(
        s3_endpoint=services.s3_endpoint,
        s3_access_key=services.credentials.s3_access_key,
        s3_secret_key=services.credentials.s3_secret_key,
    )
    ObjectStore(clients.minio_client(s3), bucket).ensure_bucket()
    redis_url = services.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    return {
        **services.environment(),
        "FECAPASS_MAIN_DB_DSN": databases.main_db_dsn.get_secret_value(),
        "FECAPASS_VECTOR_DB_DSN": databases.vector_db_dsn.get_secret_value(),
        "FECAPASS_REDIS_URL": redis_url,
        "FECAPASS_S3_BUCKET": bucket,
    }


def start_cluster(
    env: dict[str, str], log_dir: Path, *, pack: str = PACK, workers_per_stage: int = WORKERS_PER_STAGE
) -> RunningPipeline:
    """`fecapass api` and workers_per_stage `fecapass worker` processes per stage, ready to take uploads."""
    settings = {
        **env,
        "FECAPASS_MODEL_PACK": pack,
        "FECAPASS_MODEL_ROOT": str(MODEL_ROOT),
        "FECAPASS_LOG_JSON": "true",
        "FECAPASS_MAX_WAIT_SECONDS": "90",
        "FECAPASS_READ_COUNT": "4",
        "FECAPASS_ORT_THREADS": "1",
        # The receivers of test_webhooks.py listen on loopback, which webhooks may not reach by default.
        "FECAPASS_WEBHOOK_ALLOW": "127.0.0.1/32",
    }
    running = RunningPipeline(env=settings, log_dir=log_dir, workers_per_stage=workers_per_stage, metrics_port=None)
    running.keys = {scope: create_key_in(env["FECAPASS_MAIN_DB_DSN"], scope) for scope in ("read", "write")}
    running.start(ready_timeout=90)
    return running


def stop_cluster(running: RunningPipeline) -> None:
    killed = running.stop(timeout=30)
    if killed:
        pytest.fail(f"{', '.join(killed)} did not stop within 30 s of SIGTERM")


@pytest.fixture(scope="session")
def pipeline(
    services: LocalServices, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningPipeline]:
    require_pack()
    require_basic()
    running = start_cluster(service_env, tmp_path_factory.mktemp("pipeline-logs"))
    yield running
    stop_cluster(running)


def upload(client: httpx.Client, path: str, name: str, params: dict[str, Any] | None = None) -> httpx.Response:
    with (BASIC / name).open("rb") as handle:
        return client.post(path, files={"file": (name, handle)}, params=params or {})


def create_user(client: httpx.Client, name: str, collection: str | None = None) -> int:
    body = {"email": f"{name}.{uuid.uuid4().hex[:8]}@example.com", "full_name": name}
    response = client.post("/v1/users", json=body if collection is None else {**body, "collection": collection})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


@pytest.fixture(scope="module")
def own_collection(pipeline: RunningPipeline) -> Iterator[str]:
    """A collection of the module's own, erased at its end: the people a module enrolls are then never candidates
    of the session's other searches (``enrolled``'s searches expect their own people first)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    admin = {"X-API-Key": create_key_in(pipeline.env["FECAPASS_MAIN_DB_DSN"], "admin", "own-collection")}
    with httpx.Client(base_url=pipeline.base_url, timeout=90, headers=admin) as client:
        client.post("/v1/collections", json={"name": name}).raise_for_status()
        yield name
        client.delete(f"/v1/collections/{name}").raise_for_status()


@pytest.fixture(scope="session")
def enrolled(pipeline: RunningPipeline) -> dict[str, Any]:
    """One photo per identity enrolled; returns identity -> user id and the photos held back for search."""
    singles: dict[str, list[str]] = defaultdict(list)
    for row in labels():
        if row.role == "single":
            singles[row.identity].append(row.file)
    users: dict[str, int] = {}
    held_back: dict[str, list[str]] = {}
    with pipeline.client() as client:
        for identity, files in sorted(singles.items()):
            files.sort()
            users[identity] = create_user(client, identity)
            response = upload(client, f"/v1/users/{users[identity]}/faces", files[0], {"wait": 60})
            assert response.status_code == 200, response.text
            job = response.json()
            assert job["state"] == "done" and job["result"]["user_id"] == users[identity]
            assert job["result"]["faces_seen"] == 1
            held_back[identity] = files[1:]
    return {"users": users, "held_back": held_back}


def search(client: httpx.Client, name: str, **params: Any) -> dict[str, Any]:
    response = upload(client, "/v1/search", name, {"wait": 60, **params})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["state"] == "done", job
    return job
