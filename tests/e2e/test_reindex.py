"""Moving a populated installation from buffalo_sc_lite (512-d) to mbf128_lite (128-d) with `fecapass reindex`
and `fecapass models activate`: no photo uploaded again, searches answered throughout, every user still found."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

import psycopg
import pytest

from common import clients
from common.objects import ObjectStore
from common.settings import S3Settings
from operations.services import LocalServices
from tests.e2e.conftest import (
    RunningPipeline,
    create_user,
    fresh_installation,
    search,
    start_cluster,
    stop_cluster,
    upload,
)
from tests.shared_data import labels, require_basic, require_pack

pytestmark = pytest.mark.e2e

OLD, NEW = "buffalo_sc_lite", "mbf128_lite"


@pytest.fixture(scope="module")
def cluster(services: LocalServices, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPipeline]:
    require_basic()
    require_pack(OLD)
    require_pack(NEW)
    env = fresh_installation(services, "reindex", redis_db=6)
    running = start_cluster(env, tmp_path_factory.mktemp("reindex-logs"), pack=OLD, workers_per_stage=1)
    yield running
    stop_cluster(running)


def fecapass(cluster: RunningPipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "operations.cli", *args], env=cluster.env, capture_output=True, text=True, timeout=300
    )


def embeddings(cluster: RunningPipeline) -> dict[str, int]:
    with psycopg.connect(cluster.env["FECAPASS_VECTOR_DB_DSN"]) as conn:
        rows = conn.execute("SELECT model_pack, count(*) FROM face_embeddings GROUP BY model_pack").fetchall()
    return {str(pack): int(count) for pack, count in rows}


def originals(cluster: RunningPipeline) -> list[str]:
    s3 = S3Settings(
        s3_endpoint=cluster.env["FECAPASS_S3_ENDPOINT"],
        s3_access_key=cluster.env["FECAPASS_S3_ACCESS_KEY"],
        s3_secret_key=cluster.env["FECAPASS_S3_SECRET_KEY"],
    )
    return sorted(ObjectStore(clients.minio_client(s3), cluster.env["FECAPASS_S3_BUCKET"]).keys("originals/"))


def test_reindex_then_activate_moves_every_user_to_the_new_pack(cluster: RunningPipeline) -> None:
    photos: dict[str, list[str]] = defaultdict(list)
    for row in labels():
        if row.role == "single":
            photos[row.identity].append(row.file)
    users: dict[str, int] = {}
    with cluster.client() as client:
        for identity, files in sorted(photos.items()):
            files.sort()
            users[identity] = create_user(client, identity)
            assert upload(client, f"/v1/users/{users[identity]}/faces", files.pop(0), {"wait": 90}).status_code == 200
    enrolled = len(users)
    stored_photos = originals(cluster)
    assert embeddings(cluster) == {OLD: enrolled}

    refused = fecapass(cluster, "models", "activate", NEW)
    assert refused.returncode == 2 and f"{enrolled} of {enrolled} enrolled faces have no {NEW}" in refused.stderr

    # A partial run stands in for one that crashed: the next run does only the rest.
    partial = fecapass(cluster, "reindex", "--pack", NEW, "--max-faces", "2")
    assert partial.returncode == 0, partial.stderr
    assert "2 embedded now" in partial.stdout
    assert embeddings(cluster) == {OLD: enrolled, NEW: 2}
    with cluster.client() as client:  # searches still use the active pack
        job = search(client, photos["obama"][0])
        assert job["result"]["model_pack"] == OLD
        assert job["result"]["faces"][0]["matches"][0]["user_id"] == users["obama"]

    rest = fecapass(cluster, "reindex", "--pack", NEW)
    assert rest.returncode == 0, rest.stderr
    assert f"2 had a {NEW} embedding, {enrolled - 2} embedded now" in rest.stdout and "0 failed" in rest.stdout
    assert embeddings(cluster) == {OLD: enrolled, NEW: enrolled}  # the old vectors stay until activation

    status = fecapass(cluster, "models", "status")
    assert status.returncode == 0 and OLD in status.stdout and NEW in status.stdout

    activated = fecapass(cluster, "models", "activate", NEW)
    assert activated.returncode == 0, activated.stderr
    assert f"active pack: {NEW} (128-d" in activated.stdout

    with cluster.client() as client:
        deadline = time.monotonic() + 30
        while search(client, photos["obama"][0])["model_pack"] != NEW:  # API processes re-read within seconds
            assert time.monotonic() < deadline, "the API kept submitting with the old pack"
            time.sleep(1)
        for identity, files in photos.items():
            for name in files:
                job = search(client, name)
                assert job["result"]["model_pack"] == NEW
                assert job["result"]["faces"][0]["matches"][0]["user_id"] == users[identity], (name, identity)
        assert client.get("/health/ready").json()["model_pack"]["name"] == NEW
    assert originals(cluster) == stored_photos  # nothing uploaded again, nothing lost
    assert embeddings(cluster) == {OLD: enrolled, NEW: enrolled}
