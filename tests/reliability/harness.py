"""A whole Fecapass on its own real servers, with handles to break it: kill stages, restart servers, load it,
and count what became of every accepted upload."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from common import clients
from common.objects import ObjectStore
from common.settings import ApiSettings, S3Settings
from operations.installation import Installation, start_servers
from operations.services import MAIN_DB, VECTOR_DB, LocalServices
from schemas.jobs import job_key
from schemas.streams import PIPELINE, Stage
from tests.e2e.conftest import create_key_in
from tests.shared_data import BASIC, MODEL_ROOT, PACK

# Enough photos of several people to keep every stage busy.
PHOTOS = ["obama_1.jpg", "obama_2.jpg", "biden_1.jpg", "biden_2.jpg", "rose_leslie_1.jpg", "kit_harington_1.jpeg"]

# `pytest tests/reliability` is tuned for speed: quick reclaims, room for a long outage before an entry counts as
# poison. `python -m tests.reliability` (FECAPASS_RELIABILITY_PRODUCTION=1) runs the production defaults of the
# three settings that shape redelivery, so that its report describes what a deployment does.
PRODUCTION = os.environ.get("FECAPASS_RELIABILITY_PRODUCTION") == "1"
CLAIM_IDLE_MS = 30_000 if PRODUCTION else 1000
MAX_DELIVERIES = 5 if PRODUCTION else 10
READ_COUNT = 16 if PRODUCTION else 4
# Long enough for an entry to be claimed and run again max-deliveries times (each claim waits out the claim idle).
REDELIVERY_SECONDS = MAX_DELIVERIES * CLAIM_IDLE_MS / 1000 * 2 + 60
CLUSTER_ENV = {
    "FECAPASS_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
    "FECAPASS_MAX_DELIVERIES": str(MAX_DELIVERIES),
    "FECAPASS_RETRY_BACKOFF_MS": "100",
    "FECAPASS_RETRY_BACKOFF_MAX_MS": "2000",
    "FECAPASS_READ_COUNT": str(READ_COUNT),
    "FECAPASS_ORT_THREADS": "1",
    "FECAPASS_DRAIN_SECONDS": "15",
    "FECAPASS_MAX_WAIT_SECONDS": "30",
    "FECAPASS_LOG_JSON": "true",
    "FECAPASS_MAX_BACKLOG": "100000",
    # The webhook receivers of these scenarios listen on loopback, which webhooks may not reach by default.
    "FECAPASS_WEBHOOK_ALLOW": "127.0.0.1/32",
    "FECAPASS_WEBHOOK_ATTEMPTS": "1",  # each delivery one try: retries are redeliveries, counted
    "FECAPASS_WEBHOOK_TIMEOUT_SECONDS": "2",
}


# The upload-side work of issue 14 (a submit that fails after its photo's put deletes the photo; the orphan sweep;
# 503 for every outage; Idempotency-Key) is merged once its settings exist.
UPLOAD_SIDE = "orphan_after_seconds" in ApiSettings.model_fields


def in_background(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


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
    resurrected: int = 0  # face rows or embeddings of erased faces or users, embeddings without a face row
    rewritten: int = 0  # jobs whose finished state (state, finish time, error) changed after it was recorded
    orphans: int = 0  # originals and crops in the S3 folder with neither a job hash nor a face row
    blocked_s: float | None = None  # longest time a stage handled nothing while one bad entry held it
    notes: list[str] = field(default_factory=list)
    outcome: str = ""  # skipped, failed, or a known bug, and why; empty when the scenario passed

    @property
    def counts(self) -> dict[str, int]:
        return {
            "lost": self.lost,
            "duplicates": self.duplicates,
            "missing": self.missing,
            "resurrected": self.resurrected,
            "rewritten": self.rewritten,
            "orphans": self.orphans,
        }

    @property
    def zeros(self) -> bool:
        return not any(self.counts.values())


@dataclass
class Receiver:
    """A webhook receiver on loopback: counts the POSTs per job id; ``down`` answers 503 to every one."""

    url: str = ""
    posts: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, job_ids: list[str]) -> bool:
        with self.lock:
            return all(self.posts[job_id] for job_id in job_ids)


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.posts[str(json.loads(body).get("job_id"))] += 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@dataclass(kw_only=True)
class Cluster(Installation):
    services: LocalServices
    key: str = ""
    users: list[int] = field(default_factory=list)
    # Every finished job seen so far, and what its hash said: a later write that changes it is a rewrite.
    finished: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # Jobs of users the scenarios erased: erasure deletes a finished job's hash, so one that comes back is counted
    # by its own scenario (test_replayed_entries_of_erased_jobs_stay_finished), not as a rewrite here.
    erased: set[str] = field(default_factory=set)

    # -- processes ---------------------------------------------------------------------------------------

    def signal(self, name: str, signum: int) -> None:
        self.processes[name].send_signal(signum)

    def start(self, ready_timeout: float = 60) -> None:
        super().start(ready_timeout)
        self.key = create_key_in(self.services.dsn(MAIN_DB), "write", "reliability")
        self.users = [self.new_user() for _ in range(4)]

    def new_user(self) -> int:
        with self.client() as client:
            response = client.post("/v1/users", json={"email": f"r{uuid.uuid4().hex}@example.com"})
            return int(response.json()["id"])

    def ready(self) -> int:
        try:
            return httpx.get(f"{self.base_url}/health/ready", timeout=8).status_code
        except httpx.HTTPError:
            return 0

    def client(self, base_url: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=base_url or self.base_url, timeout=60, headers={"X-API-Key": self.key})

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.services.redis_url)

    def store(self) -> ObjectStore:
        settings = S3Settings(
            s3_endpoint=self.services.s3_endpoint,
            s3_access_key=self.services.credentials.s3_access_key,
            s3_secret_key=self.services.credentials.s3_secret_key,
        )
        return ObjectStore(clients.minio_client(settings), self.services.bucket)

    # -- load and accounting ---------------------------------------------------------------------------------

    def submit(
        self,
        ledger: Ledger,
        jobs: int,
        *,
        concurrency: int = 6,
        base_url: str | None = None,
        users: list[int] | None = None,
        callback_url: str | None = None,
    ) -> list[str]:
        """Enroll ``jobs`` photos across the users; records which uploads got their 202, returns their job ids."""
        users = users or self.users
        params = {"callback_url": callback_url} if callback_url else {}

        def one(index: int) -> tuple[int, str | None]:
            user = users[index % len(users)]
            photo = PHOTOS[index % len(PHOTOS)]
            with self.client(base_url) as client:
                try:
                    response = client.post(
                        f"/v1/users/{user}/faces",
                        params=params,
                        files={"file": (photo, (BASIC / photo).read_bytes())},
                    )
                except httpx.HTTPError:
                    return 0, None
            return response.status_code, response.json().get("job_id") if response.status_code == 202 else None

        accepted = []
        with ThreadPoolExecutor(concurrency) as pool:
            for status, job_id in pool.map(one, range(jobs)):
                ledger.submitted += 1
                if job_id:
                    ledger.accepted.append(job_id)
                    accepted.append(job_id)
                else:
                    ledger.refused[status] += 1
        return accepted

    def job(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode(errors="replace") for k, v in self.redis().hgetall(job_key(job_id)).items()}

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """Each job's state from its Redis hash: done, failed:<code>, another state, or absent."""
        with self.redis().pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), "state", "error_code")
            rows = pipe.execute()
        states = {}
        for job_id, (state, code) in zip(job_ids, rows, strict=True):
            text = state.decode() if state else "absent"
            states[job_id] = f"failed:{code.decode() if code else '?'}" if text == "failed" else text
        return states

    def wait_finished(self, job_ids: list[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.states(job_ids)
            except redis.ConnectionError:  # a Valkey being restarted
                time.sleep(0.5)
                continue
            if all(s == "done" or s.startswith("failed") for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.3)

    def settle(self, ledger: Ledger, timeout: float = 240) -> None:
        """Wait for every accepted job to finish (its Redis hash says done or failed), then count outcomes,
        losses and duplicates from Redis and PostgreSQL, and take the census of the whole installation."""
        states = self.wait_finished(ledger.accepted, timeout + REDELIVERY_SECONDS)
        finished = {j: s for j, s in states.items() if s == "done" or s.startswith("failed")}
        ledger.states.update(finished.values())
        ledger.lost = len(states) - len(finished)
        done = [job for job, state in states.items() if state == "done"]
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
        self.census(ledger)

    # -- the census: counted from PostgreSQL, Redis and the S3 folder ----------------------------------------

    def census(self, ledger: Ledger) -> None:
        ledger.rewritten = self.rewritten()
        ledger.resurrected = self.resurrected()
        ledger.orphans = len(self.orphans())

    def rewritten(self) -> int:
        """Jobs whose finished state changed since it was first seen; records the newly finished ones. An erased
        job's hash is deleted (that is not a rewrite); one that comes back must say the same."""
        client = self.redis()
        cursor, changed = 0, 0
        seen: dict[str, tuple[str, str, str]] = {}
        while True:
            cursor, keys = client.scan(cursor, match=job_key("*"), count=1000)
            with client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, "state", "finished_at", "error_code")
                rows = pipe.execute()
            for key, row in zip(keys, rows, strict=True):
                state, at, code = (v.decode() if v else "" for v in row)
                if state in ("done", "failed"):
                    seen[key.decode().removeprefix(job_key(""))] = (state, at, code)
            if not cursor:
                break
        for job_id, now in seen.items():
            if job_id in self.erased:
                continue
            before = self.finished.setdefault(job_id, now)
            changed += before != now
        return changed

    def resurrected(self) -> int:
        """Face rows of erased users or faces, and embeddings whose face row is gone (an erased face's)."""
        with psycopg.connect(self.services.dsn(MAIN_DB)) as conn:
            (erased_rows,) = conn.execute(
                "SELECT count(*) FROM faces WHERE user_id IN (SELECT user_id FROM erased_users)"
                " OR job_id IN (SELECT job_id FROM erased_faces)"
            ).fetchone() or (0,)
            face_ids = {int(row[0]) for row in conn.execute("SELECT id FROM faces").fetchall()}
        with psycopg.connect(self.services.dsn(VECTOR_DB)) as conn:
            embedded = {int(row[0]) for row in conn.execute("SELECT DISTINCT face_id FROM face_embeddings").fetchall()}
        return int(erased_rows) + len(embedded - face_ids)

    @property
    def bucket_dir(self) -> Path:
        return self.services.data_dir / "s3" / self.services.bucket

    def objects(self, job_id: str) -> list[str]:
        """The job's originals and crops in the S3 folder."""
        found = [p.name for p in (self.bucket_dir / "originals").glob(f"{job_id}*") if p.name.split(".")[0] == job_id]
        crops = self.bucket_dir / "crops" / job_id
        return found + ([f"crops/{job_id}/{p.name}" for p in crops.iterdir()] if crops.is_dir() else [])

    def orphans(self) -> list[str]:
        """Originals and crops in the S3 folder whose job has neither a Redis hash nor a face row."""
        keys: dict[str, list[str]] = {}
        for path in (self.bucket_dir / "originals").glob("*"):
            if path.is_file():
                keys.setdefault(path.name.split(".")[0], []).append(f"originals/{path.name}")
        crops = self.bucket_dir / "crops"
        for folder in crops.glob("*") if crops.is_dir() else []:
            files = [f"crops/{folder.name}/{p.name}" for p in folder.iterdir() if p.is_file()]
            if files:
                keys.setdefault(folder.name, []).extend(files)
        if not keys:
            return []
        jobs = list(keys)
        with self.redis().pipeline(transaction=False) as pipe:
            for job_id in jobs:
                pipe.exists(job_key(job_id))
            hashed = {job for job, exists in zip(jobs, pipe.execute(), strict=True) if exists}
        with psycopg.connect(self.services.dsn(MAIN_DB)) as conn:
            faced = {row[0] for row in conn.execute("SELECT job_id FROM faces WHERE job_id = ANY(%s)", (jobs,))}
        return [key for job in jobs if job not in hashed and job not in faced for key in keys[job]]

    def forgive_refused_upload_orphans(self, ledger: Ledger) -> int:
        """Until the upload-side work is merged, an upload refused with 503 because Redis failed after its photo's put
        leaves that photo behind. They stay counted in this scenario's row, with a note, and are removed so that later
        rows count their own; returns how many. After the merge there must be none (the caller asserts it)."""
        if UPLOAD_SIDE or not ledger.orphans:
            return 0
        # An upload the client gave up on may still be finishing in the API (its Redis client retries): count
        # once the orphans have stayed the same for a few seconds.
        orphans, deadline = self.orphans(), time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(5)
            again = self.orphans()
            if again == orphans:
                break
            orphans = again
        ledger.orphans = len(orphans)
        self.store().delete_many(orphans)
        ledger.notes.append(
            f"{len(orphans)} orphan original(s) left by uploads refused with 503 after their photo's put (Redis failed "
            "before the XADD): the upload-side work of issue 14, not merged in this build, deletes them; removed here."
        )
        return len(orphans)

    # -- streams -----------------------------------------------------------------------------------------------

    def entries_of(self, stream: str, job_ids: set[str]) -> list[tuple[str, dict[bytes, bytes]]]:
        """The entries of ``stream`` that carry one of these jobs (read whole: streams stay small in these runs)."""
        found = []
        for entry_id, fields in self.redis().xrange(stream):
            if fields.get(b"job_id", b"").decode(errors="replace") in job_ids:
                found.append((entry_id.decode(), fields))
        return found

    def consumer_of(self, name: str, stage: Stage) -> str | None:
        """The consumer name of the process ``name`` in its stage's group (host-pid-random)."""
        prefix = f"-{self.processes[name].pid}-"
        for consumer in self.redis().xinfo_consumers(stage.stream, stage.group):
            if prefix in consumer["name"].decode():
                return str(consumer["name"].decode())
        return None

    def held_by(self, consumer: str, stage: Stage) -> list[str]:
        rows = self.redis().xpending_range(
            stage.stream, stage.group, min="-", max="+", count=1000, consumername=consumer
        )
        return [row["message_id"].decode() for row in rows]

    def alive(self) -> list[str]:
        """Processes that ended other than by a signal this harness sent (the API and the current stages)."""
        return [name for name, process in self.processes.items() if process.poll() is None]

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
