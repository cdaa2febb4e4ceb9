"""A whole Fecapass on its own real servers, with handles to break it: kill stages, restart servers, load it,
and count what became of every accepted upload."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import redis

from operations.installation import Installation, start_servers
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from schemas.streams import PIPELINE
from tests.e2e.conftest import create_key_in
from tests.shared_data import BASIC, MODEL_ROOT, PACK

# Enough photos of several people to keep every stage busy.
PHOTOS = ["obama_1.jpg", "obama_2.jpg", "biden_1.jpg", "biden_2.jpg", "rose_leslie_1.jpg", "kit_harington_1.jpeg"]

# Tuned for faults: quick reclaims, room for a long outage before an entry counts as poison.
CLUSTER_ENV = {
    "FECAPASS_CLAIM_IDLE_MS": "1000",
    "FECAPASS_MAX_DELIVERIES": "10",
    "FECAPASS_RETRY_BACKOFF_MS": "100",
    "FECAPASS_RETRY_BACKOFF_MAX_MS": "2000",
    "FECAPASS_READ_COUNT": "4",
    "FECAPASS_ORT_THREADS": "1",
    "FECAPASS_DRAIN_SECONDS": "15",
    "FECAPASS_MAX_WAIT_SECONDS": "30",
    "FECAPASS_LOG_JSON": "true",
    "FECAPASS_MAX_BACKLOG": "100000",
}


@dataclass
class Ledger:
    """What became of the accepted uploads of one fault scenario."""

    fault: str
    submitted: int = 0
    accepted: list[str] = field(default_factory=list)
    refused: Counter[int] = field(default_factory=Counter)  # HTTP status -> count, for uploads not accepted
    states: Counter[str] = field(default_factory=Counter)  # done, or failed:<code>
    lost: int = 0  # accepted, never finished
    duplicates: int = 0  # extra face rows or embeddings
    missing: int = 0  # done enrolls without their face row or embedding
    notes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Cluster(Installation):
    services: LocalServices
    key: str = ""
    users: list[int] = field(default_factory=list)

    # -- processes ---------------------------------------------------------------------------------------

    def signal(self, name: str, signum: int) -> None:
        self.processes[name].send_signal(signum)

    def start(self, ready_timeout: float = 60) -> None:
        super().start(ready_timeout)
        self.key = create_key_in(self.services.dsn(MAIN_DB), "write", "reliability")
        with self.client() as client:
            for _ in range(4):
                response = client.post("/v1/users", json={"email": f"r{uuid.uuid4().hex}@example.com"})
                self.users.append(int(response.json()["id"]))

    def ready(self) -> int:
        try:
            return httpx.get(f"{self.base_url}/health/ready", timeout=8).status_code
        except httpx.HTTPError:
            return 0

    def client(self, base_url: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=base_url or self.base_url, timeout=60, headers={"X-API-Key": self.key})

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.services.redis_url)

    # -- load and accounting ---------------------------------------------------------------------------------

    def submit(self, ledger: Ledger, jobs: int, *, concurrency: int = 6, base_url: str | None = None) -> None:
        """Enroll ``jobs`` photos across the users; records which uploads got their 202."""

        def one(index: int) -> tuple[int, str | None]:
            user = self.users[index % len(self.users)]
            photo = PHOTOS[index % len(PHOTOS)]
            with self.client(base_url) as client:
                try:
                    response = client.post(
                        f"/v1/users/{user}/faces", files={"file": (photo, (BASIC / photo).read_bytes())}
                    )
                except httpx.HTTPError:
                    return 0, None
            return response.status_code, response.json().get("job_id") if response.status_code == 202 else None

        with ThreadPoolExecutor(concurrency) as pool:
            for status, job_id in pool.map(one, range(jobs)):
                ledger.submitted += 1
                if job_id:
                    ledger.accepted.append(job_id)
                else:
                    ledger.refused[status] += 1

    def settle(self, ledger: Ledger, timeout: float = 240) -> None:
        """Wait for every accepted job to finish, then count outcomes, losses and duplicates."""
        deadline = time.monotonic() + timeout

        def final_state(job_id: str) -> str:
            with self.client() as client:
                while time.monotonic() < deadline:
                    try:
                        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
                    except (httpx.HTTPError, ValueError):
                        time.sleep(1)
                        continue
                    if job.get("state") == "done":
                        return "done"
                    if job.get("state") == "failed":
                        return f"failed:{job['error']['code']}"
                    if job.get("code") == "job_not_found":
                        return "lost"
            return "lost"

        with ThreadPoolExecutor(8) as pool:
            states = list(pool.map(final_state, ledger.accepted))
        ledger.states.update(s for s in states if s != "lost")
        ledger.lost = states.count("lost")
        done = [job for job, state in zip(ledger.accepted, states, strict=True) if state == "done"]
        with psycopg.connect(self.services.dsn(MAIN_DB)) as conn:
            rows = conn.execute(
                "SELECT job_id, count(*), min(id) FROM faces WHERE job_id = ANY(%s) GROUP BY job_id", (done,)
            ).fetchall()
        face_ids = [int(row[2]) for row in rows]
        with psycopg.connect(self.services.dsn(VECTOR_DB)) as conn:
            vectors = dict(
                conn.execute(
                    "SELECT face_id, count(*) FROM face_embeddings WHERE face_id = ANY(%s) GROUP BY face_id",
                    (face_ids,),
                ).fetchall()
            )
        ledger.duplicates = sum(int(row[1]) - 1 for row in rows) + sum(int(n) - 1 for n in vectors.values())
        ledger.missing = (len(done) - len(rows)) + (len(face_ids) - len(vectors))

    def pending(self) -> dict[str, int]:
        client = self.redis()
        return {stage.value: int(client.xpending(stage.stream, stage.group)["pending"]) for stage in PIPELINE}

    def wait_no_pending(self, timeout: float = 30) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        pending = self.pending()
        while any(pending.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            pending = self.pending()
        return pending


def make_cluster(data_dir: Path, log_dir: Path) -> Cluster:
    services = start_servers(LocalServices(data_dir, durable=True))
    env = {**services.environment(), **CLUSTER_ENV, "FECAPASS_MODEL_PACK": PACK, "FECAPASS_MODEL_ROOT": str(MODEL_ROOT)}
    cluster = Cluster(services=services, log_dir=log_dir, env=env)
    cluster.start()
    return cluster
