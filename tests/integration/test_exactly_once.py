"""Exactly-once effects from an at-least-once stream, against a real Valkey (and S3 where objects matter).

A job's state only moves forward and a finished job stays finished; a consumer that lost its entry (paused past
the visibility timeout while another claimed it) writes nothing; no entry, whatever its bytes, stops a stage;
one unreadable object fails its job instead of stalling the stage; the loop's heartbeat shows a stuck stage.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import redis

from common import clients
from common.errors import DependencyUnavailable, PoisonMessage, TransientError
from common.handlers import HandlerResult, Outcome, per_message
from common.heartbeat import heartbeat_problem
from common.objects import ObjectMissing, ObjectStore
from common.runner import StageRunner, ensure_group
from common.settings import S3Settings
from operations.services import LocalServices
from schemas.jobs import ErrorCode, job_key
from schemas.results import FinishedResult, ReindexResult
from schemas.streams import (
    AlignedFace,
    DetectedMessage,
    EmbeddedMessage,
    JobKind,
    JobMessage,
    Stage,
    WebhookMessage,
    encode_embeddings,
)
from tests.conftest import redis_client_url
from tests.integration.test_runner import FAST, ScriptedHandler, enqueue, job, pending_count

ROOT = Path(__file__).resolve().parents[2]


def wait_until(check: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finish_job(client: redis.Redis, job_id: str) -> None:
    client.hset(job_key(job_id), mapping={"state": "done", "result": '{"first": true}', "finished_at": "1"})


def pending_of(client: redis.Redis, message_id: str, stage: Stage = Stage.ALIGN) -> dict[str, object]:
    [row] = client.xpending_range(stage.stream, stage.group, min=message_id, max=message_id, count=1)
    return {"consumer": row["consumer"].decode(), "deliveries": row["times_delivered"]}


def dead_letters(client: redis.Redis, stage: Stage = Stage.ALIGN) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange(stage.dead_letter_stream)
    ]


def webhooks_queued(client: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(WebhookMessage.from_fields(f).body) for _, f in client.xrange(Stage.WEBHOOK.stream)]


class Finisher(ScriptedHandler):
    """Index-stage stand-in: every message finishes its job."""

    stage = Stage.INDEX

    def handle(self, message: JobMessage) -> Outcome:
        self.calls.append(message.job_id)
        return Outcome(result=FinishedResult.without_photos(ReindexResult(face_id=1, model_pack=message.job_id)))


class EmbeddedFinisher(Finisher):
    message_type = EmbeddedMessage  # the index stage's input


def embedded(job_id: str) -> EmbeddedMessage:
    """A well-formed index-stage entry of a search job (every earlier stage's fields included)."""
    face = AlignedFace(box=(10, 20, 110, 140), keypoints=[(0, 0)] * 5, score=0.97, crop_key=f"crops/{job_id}/0.png")
    return EmbeddedMessage(
        job_id=job_id,
        kind=JobKind.SEARCH,
        image_key=f"originals/{job_id}",
        pack="p",
        crop_size=112,
        faces=[face],
        faces_seen=1,
        embeddings=encode_embeddings(np.ones((1, 4), dtype=np.float32)),
        dim=4,
    )


# -- 1. a job's state only moves forward ---------------------------------------------------------------------


def test_a_duplicate_entry_of_a_done_job_is_acked_without_running(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "twice")
    finish_job(redis_client, "twice")
    handler = ScriptedHandler()
    StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert handler.calls == []
    state = job(redis_client, "twice")
    assert state["state"] == "done" and state["result"] == '{"first": true}' and "align_started_at" not in state
    assert redis_client.xlen(Stage.EMBED.stream) == 0 and pending_count(redis_client) == 0


def test_an_entry_of_a_job_an_erasure_closed_runs_on_and_leaves_the_job_as_it_is(redis_client: redis.Redis) -> None:
    """The erasure left the photo of a job whose entry a worker held, for the index stage to delete: the later stages
    run its entries (other failed jobs' entries are acked unrun), and none of their writes reopens it."""
    ensure_group(redis_client, Stage.ALIGN)
    closed = {"state": "failed", "error_message": "the user was erased", "finished_at": "1"}
    for job_id, code in (("erased", "user_not_found"), ("face-erased", "face_erased"), ("failed", "internal")):
        enqueue(redis_client, job_id)
        redis_client.hset(job_key(job_id), mapping={**closed, "error_code": code})
    handler = ScriptedHandler()
    StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert sorted(handler.calls) == ["erased", "face-erased"]
    forwarded = [fields[b"job_id"] for _, fields in redis_client.xrange(Stage.EMBED.stream)]
    assert sorted(forwarded) == [b"erased", b"face-erased"] and pending_count(redis_client) == 0
    for job_id in ("erased", "face-erased", "failed"):
        state = job(redis_client, job_id)
        assert state["state"] == "failed" and not {"align_started_at", "align_finished_at"} & set(state), state


def test_a_stale_delivery_does_not_move_a_job_back(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "ahead")
    redis_client.hset(job_key("ahead"), "state", "embedding")  # a later stage already has it
    StageRunner(redis_client, ScriptedHandler(), FAST, job_ttl_seconds=600, consumer="a").run_once()
    state = job(redis_client, "ahead")
    assert state["state"] == "embedding" and "align_started_at" not in state and "align_finished_at" not in state


def test_a_malformed_entry_naming_a_done_job_does_not_fail_it(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    finish_job(redis_client, "kept")
    redis_client.xadd(Stage.ALIGN.stream, {"v": "1", "job_id": "kept", "kind": "paint"})
    StageRunner(redis_client, ScriptedHandler(), FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert [d["dead_error_code"] for d in dead_letters(redis_client)] == ["malformed_message"]
    state = job(redis_client, "kept")
    assert state["state"] == "done" and "error_code" not in state


def test_too_many_deliveries_of_a_done_jobs_entry_leave_it_done(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    message_id = enqueue(redis_client, "worn")
    redis_client.xreadgroup(Stage.ALIGN.group, "ghost", {Stage.ALIGN.stream: ">"}, count=1)
    redis_client.xclaim(Stage.ALIGN.stream, Stage.ALIGN.group, "ghost", 0, [message_id], retrycount=FAST.max_deliveries)
    finish_job(redis_client, "worn")
    time.sleep(0.15)
    StageRunner(redis_client, ScriptedHandler(), FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert [d["dead_error_code"] for d in dead_letters(redis_client)] == ["too_many_deliveries"]
    assert job(redis_client, "worn")["state"] == "done"


def test_a_job_finished_meanwhile_is_not_finished_again(redis_client: redis.Redis) -> None:
    """Two entries of one job race: the other finished it while this handler ran. No second result, PUBLISH
    or webhook."""

    class RacedFinisher(Finisher):
        def handle(self, message: JobMessage) -> Outcome:
            finish_job(redis_client, message.job_id)
            return super().handle(message)

    ensure_group(redis_client, Stage.INDEX)
    message = JobMessage(job_id="raced", kind=JobKind.SEARCH, image_key="k", callback_url="http://x.test/h")
    redis_client.hset(job_key("raced"), "state", "embedding")
    redis_client.xadd(Stage.INDEX.stream, message.to_fields())
    pubsub = redis_client.pubsub()
    pubsub.subscribe("fecapass:jobs:finished")
    pubsub.get_message(timeout=1)
    StageRunner(redis_client, RacedFinisher(), FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert job(redis_client, "raced")["result"] == '{"first": true}'
    assert redis_client.xlen(Stage.WEBHOOK.stream) == 0
    assert pubsub.get_message(timeout=0.3) is None
    pubsub.close()
    assert pending_count(redis_client, Stage.INDEX) == 0


# -- 2. a consumer that lost its entry writes nothing ----------------------------------------------------------


def test_a_paused_consumer_writes_nothing_after_another_finished_its_entry(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "paused")
    rescuer = ScriptedHandler()

    class Pauses(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            # As if SIGSTOPped past the visibility timeout: another consumer claims and finishes the entry.
            time.sleep(FAST.claim_idle_ms / 1000 * 1.5)
            StageRunner(redis_client, rescuer, FAST, job_ttl_seconds=600, consumer="b").run_once()
            return super().handle_batch(messages)  # SIGCONT: this one finishes too

    paused = Pauses()
    StageRunner(redis_client, paused, FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert rescuer.calls == ["paused"] and paused.calls == ["paused"]
    assert redis_client.xlen(Stage.EMBED.stream) == 1  # the rescuer's output only
    assert pending_count(redis_client) == 0
    assert job(redis_client, "paused")["state"] == "aligning"


PAUSABLE_STAGE = """
import sys, time, redis
from common.runner import StageRunner
from common.settings import StreamSettings
from tests.integration.test_runner import ScriptedHandler

client = redis.Redis.from_url(sys.argv[1])

class WaitsForGo(ScriptedHandler):
    def handle_batch(self, messages):
        client.set("test:in-handler", "1")
        while not client.exists("test:go"):
            time.sleep(0.01)
        return super().handle_batch(messages)

settings = StreamSettings(read_count=8, block_ms=50, claim_idle_ms=100, max_deliveries=3)
StageRunner(client, WaitsForGo(), settings, job_ttl_seconds=600, consumer="stopped").run_once()
"""


def test_a_sigstopped_stage_writes_nothing_after_sigcont(redis_client: redis.Redis, services: LocalServices) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "sigstop")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FECAPASS_LOG_JSON": "false"}
    paused = subprocess.Popen(
        [sys.executable, "-c", PAUSABLE_STAGE, redis_client_url(services)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: redis_client.exists("test:in-handler"), 60, "the stage to hold the entry")
        paused.send_signal(signal.SIGSTOP)
        time.sleep(FAST.claim_idle_ms / 1000 * 1.5)
        rescuer = ScriptedHandler()
        StageRunner(redis_client, rescuer, FAST, job_ttl_seconds=600, consumer="rescuer").run_once()
        assert rescuer.calls == ["sigstop"] and redis_client.xlen(Stage.EMBED.stream) == 1
        redis_client.set("test:go", "1")
        paused.send_signal(signal.SIGCONT)
        output, _ = paused.communicate(timeout=60)
    finally:
        paused.kill()
        paused.wait()
    assert paused.returncode == 0, output
    assert b"stage.claim_lost" in output
    assert redis_client.xlen(Stage.EMBED.stream) == 1  # the woken stage added nothing
    assert pending_count(redis_client) == 0


def test_an_entry_claimed_away_and_back_is_still_fenced(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    message_id = enqueue(redis_client, "boomerang")

    class ClaimedAwayAndBack(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            for consumer in ("b", "a"):  # same owner again, but two more deliveries
                redis_client.xclaim(Stage.ALIGN.stream, Stage.ALIGN.group, consumer, 0, [message_id])
            return super().handle_batch(messages)

    StageRunner(redis_client, ClaimedAwayAndBack(), FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert redis_client.xlen(Stage.EMBED.stream) == 0
    assert pending_of(redis_client, message_id) == {"consumer": "a", "deliveries": 3}


def test_dead_lettering_is_fenced_too(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    message_id = enqueue(redis_client, "fenced-poison")

    class LosesItThenFindsPoison(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            redis_client.xclaim(Stage.ALIGN.stream, Stage.ALIGN.group, "b", 0, [message_id])
            return [PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "bad")]

    StageRunner(redis_client, LosesItThenFindsPoison(), FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0
    assert job(redis_client, "fenced-poison")["state"] == "aligning"  # not failed by the one that lost it
    assert pending_of(redis_client, message_id)["consumer"] == "b"


def test_waiting_out_an_outage_does_not_take_back_a_claimed_entry(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    message_id = enqueue(redis_client, "taken")

    class ClaimedDuringOutage(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            self.calls.append("taken")
            redis_client.xclaim(Stage.ALIGN.stream, Stage.ALIGN.group, "b", 0, [message_id])
            return [DependencyUnavailable("S3 down")]

    handler = ClaimedDuringOutage()
    settings = FAST.model_copy(update={"retry_backoff_ms": 10})
    StageRunner(redis_client, handler, settings, job_ttl_seconds=600, consumer="a").run_once()
    assert handler.calls == ["taken"]  # not retried in place: it is b's now
    assert pending_of(redis_client, message_id) == {"consumer": "b", "deliveries": 2}


# -- 3. no entry stops a stage -------------------------------------------------------------------------------


def test_entries_of_any_bytes_are_dead_lettered_and_the_stage_keeps_running(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.INDEX)
    stream = Stage.INDEX.stream
    huge = b"x" * (10 * 1024 * 1024)
    bad: list[dict[bytes, bytes]] = [
        {b"v": b"1", b"job_id": b"\xff\xfe", b"kind": b"\xc3\x28"},  # not UTF-8
        {b"\x00\xff": b"\x80", b"v": b"1"},  # binary field names, nothing required
        {b"v": b"2", b"job_id": b"future", b"kind": b"search", b"image_key": b"k"},  # unknown version
        {b"v": b"1", b"job_id": b"huge", b"kind": b"search", b"image_key": huge},  # a 10 MB field, then bad faces
        {b"v": b"1", b"job_id": b"deep", b"kind": b"search", b"image_key": b"k", b"faces": b"[" * 100_000},
        {b"v": b"1", b"job_id": b"wide", **{f"extra{i}".encode(): b"1" for i in range(5000)}},
        {b"v": b"1", b"job_id": b"\xff\xfe", b"kind": b"search", b"image_key": b"k"},  # all fine but the job id
    ]
    bad[3][b"faces"] = b"not json"
    for fields in bad:
        redis_client.xadd(stream, fields)
    # The index stage's own message model, which has faces to parse (a plain JobMessage ignores a faces field).
    redis_client.hset(job_key("healthy"), mapping={"kind": "search", "state": "embedding"})
    redis_client.xadd(stream, embedded("healthy").to_fields())
    handler = EmbeddedFinisher()
    runner = StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="a")
    for _ in range(5):
        runner.run_once()
    assert handler.calls == ["healthy"] and job(redis_client, "healthy")["state"] == "done"
    letters = dead_letters(redis_client, Stage.INDEX)
    assert len(letters) == len(bad) and pending_count(redis_client, Stage.INDEX) == 0
    assert {d["dead_error_code"] for d in letters} == {"malformed_message"}
    assert letters[0]["job_id"] == "\\xff\\xfe" and letters[0]["kind"] == "\\xc3("
    assert letters[1]["\x00\\xff"] == "\\x80"  # NUL is UTF-8; the byte 0xff is not
    assert len(letters[3]["image_key"]) == 64 * 1024 and "image_key: 10485760 bytes" in letters[3]["dead_truncated"]
    assert "fields dropped" in letters[5]["dead_truncated"]
    # Jobs the bad entries plainly name are failed; a job id that is not text creates nothing.
    assert job(redis_client, "deep")["error_code"] == "malformed_message"
    job_keys = {k.decode("utf-8", "backslashreplace") for k in redis_client.keys("fecapass:job:*")}
    assert job_keys == {job_key(j) for j in ("healthy", "future", "huge", "deep", "wide")}


CRASHING_STAGE = """
import os, sys, redis
from common.runner import StageRunner
from common.settings import StreamSettings
from tests.integration.test_runner import ScriptedHandler

class Crashes(ScriptedHandler):
    def handle_batch(self, messages):
        os._exit(3)  # as a segfault in native code would: no exception, no cleanup

settings = StreamSettings(read_count=8, block_ms=50, claim_idle_ms=100, max_deliveries=2)
client = redis.Redis.from_url(sys.argv[1])
StageRunner(client, Crashes(), settings, job_ttl_seconds=600, consumer=sys.argv[2]).run_once()
"""


def test_an_entry_that_crashes_its_process_is_dead_lettered_without_running_again(
    redis_client: redis.Redis, services: LocalServices
) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "segfault", stage=Stage.ALIGN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(2):  # the first process reads it, the second claims it: both die in the handler
        time.sleep(0.15)
        crashed = subprocess.run(
            [sys.executable, "-c", CRASHING_STAGE, redis_client_url(services), f"crash-{attempt}"],
            env=env,
            capture_output=True,
            timeout=60,
        )
        assert crashed.returncode == 3, crashed.stderr
    time.sleep(0.15)
    survivor = ScriptedHandler()
    settings = FAST.model_copy(update={"max_deliveries": 2})
    StageRunner(redis_client, survivor, settings, job_ttl_seconds=600, consumer="survivor").run_once()
    assert survivor.calls == []
    [letter] = dead_letters(redis_client)
    assert letter["dead_error_code"] == "too_many_deliveries" and letter["dead_deliveries"] == "3"
    assert job(redis_client, "segfault")["error_code"] == "too_many_deliveries"


# -- 6. a job that ends in a dead letter still fires its webhook ------------------------------------------------


def test_a_job_dead_lettered_after_too_many_deliveries_fires_its_webhook(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    message = JobMessage(job_id="hooked", kind=JobKind.ENROLL, image_key="k", callback_url="http://x.test/h")
    redis_client.hset(job_key("hooked"), "state", "aligning")
    redis_client.xadd(Stage.ALIGN.stream, message.to_fields())
    handler = ScriptedHandler({"hooked": [RuntimeError("boom")] * 10})
    runner = StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="a")
    for _ in range(FAST.max_deliveries + 2):
        runner.run_once()
        time.sleep(0.12)
    [hook] = webhooks_queued(redis_client)
    assert hook["job_id"] == "hooked" and hook["state"] == "failed" and hook["kind"] == "enroll"
    assert hook["error"]["code"] == "too_many_deliveries"


def test_a_malformed_entry_with_a_callback_fires_its_webhook(redis_client: redis.Redis) -> None:
    class Aligner(ScriptedHandler):
        message_type = DetectedMessage  # the align stage's input, whose faces are parsed

    ensure_group(redis_client, Stage.ALIGN)
    fields = {**embedded("broken-faces").to_fields()}
    fields.update({"callback_url": "http://x.test/h", "faces": "{not json"})
    redis_client.xadd(Stage.ALIGN.stream, fields)
    handler = Aligner()
    StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert handler.calls == []
    [hook] = webhooks_queued(redis_client)
    assert hook["job_id"] == "broken-faces" and hook["error"]["code"] == "malformed_message"


# -- 4. one bad object is a failed job; an outage is waited out --------------------------------------------------


class ReadsObjects(ScriptedHandler):
    """Align-stage stand-in that reads each job's photo, as the detect and align handlers do."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__()
        self.store = store

    def handle(self, message: JobMessage) -> Outcome:
        self.calls.append(message.job_id)
        try:
            self.store.get(message.image_key)
        except ObjectMissing as exc:
            raise TransientError(f"object {message.image_key} is missing") from exc
        return Outcome(forward=message)


class FaultyProxy(http.server.ThreadingHTTPServer):
    """Forwards every request to the real S3 server, except GETs of one key: 500, as a broken disk would give."""

    def __init__(self, upstream: str, bad_key: str) -> None:
        self.upstream = upstream
        self.bad_key = bad_key
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: FaultyProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.command == "GET" and self.path.split("?")[0].endswith(self.server.bad_key):
            error = b"<Error><Code>InternalError</Code><Message>disk</Message></Error>"
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=10)
        upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward


def s3_store(services: LocalServices, endpoint: str) -> ObjectStore:
    settings = S3Settings(
        s3_endpoint=endpoint,
        s3_access_key=services.credentials.s3_access_key,
        s3_secret_key=services.credentials.s3_secret_key,
        s3_bucket=services.bucket,
    )
    return clients.object_store(settings)


@pytest.fixture
def faulty_store(services: LocalServices, object_store: ObjectStore) -> Iterator[ObjectStore]:
    proxy = FaultyProxy(services.s3_endpoint, "originals/unreadable-photo")
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield s3_store(services, proxy.endpoint)
    proxy.shutdown()
    proxy.server_close()


def test_one_bad_object_fails_its_job_without_stalling_the_stage(
    redis_client: redis.Redis, object_store: ObjectStore, faulty_store: ObjectStore
) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    for name in ("good-1", "good-2", "unreadable-photo"):
        object_store.put(f"originals/{name}", b"photo")
    jobs = ["good-1", "unreadable-photo", "missing-photo", "good-2"]
    for name in jobs:
        enqueue(redis_client, name)
    handler = ReadsObjects(faulty_store)
    # A long outage budget: a bad object taken for an outage would be retried in place again and again.
    settings = FAST.model_copy(update={"outage_retry_seconds": 30, "retry_backoff_ms": 10, "max_deliveries": 2})
    runner = StageRunner(redis_client, handler, settings, job_ttl_seconds=600, consumer="a")
    runner.run_once()
    assert handler.calls == jobs  # each once: nothing waited in place
    assert [JobMessage.from_fields(f).job_id for _, f in redis_client.xrange(Stage.EMBED.stream)] == [
        "good-1",
        "good-2",
    ]
    assert pending_count(redis_client) == 2  # the bad two, back to redelivery
    for _ in range(8):
        time.sleep(0.12)
        runner.run_once()
    unreadable = job(redis_client, "unreadable-photo")
    assert unreadable["state"] == "failed" and unreadable["error_code"] == "object_unreadable"
    assert handler.calls.count("unreadable-photo") == 2  # its deliveries, then the job failed
    assert [d["job_id"] for d in dead_letters(redis_client)] == ["missing-photo"]  # not the unreadable one
    assert pending_count(redis_client) == 0


def test_a_stopped_store_is_waited_out_in_place_and_nothing_is_lost(redis_client: redis.Redis, tmp_path: Path) -> None:
    s3 = LocalServices(tmp_path / "own-s3")
    s3.start_s3()
    try:
        store = s3_store(s3, s3.s3_endpoint)
        ensure_group(redis_client, Stage.ALIGN)
        for name in ("outage-1", "outage-2"):
            store.put(f"originals/{name}", b"photo")
        s3.stop_service("s3")
        ids = [enqueue(redis_client, name) for name in ("outage-1", "outage-2")]
        handler = ReadsObjects(store)
        settings = FAST.model_copy(update={"retry_backoff_ms": 20, "retry_backoff_max_ms": 200})
        runner = StageRunner(redis_client, handler, settings, job_ttl_seconds=600, consumer="a")
        worker = threading.Thread(target=runner.run, daemon=True)
        worker.start()
        wait_until(lambda: len(handler.calls) >= 6, 60, "retries in place")
        assert redis_client.xlen(Stage.EMBED.stream) == 0 and redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0
        assert [pending_of(redis_client, i)["deliveries"] for i in ids] == [1, 1]  # no delivery counted
        s3.start_s3()
        wait_until(lambda: redis_client.xlen(Stage.EMBED.stream) == 2, 60, "the batch after S3 came back")
        runner.request_stop()
        worker.join(30)
        assert pending_count(redis_client) == 0 and redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0
    finally:
        s3.stop()


# -- 5. the heartbeat shows a stuck loop -------------------------------------------------------------------------


def test_a_hung_handler_fails_the_healthcheck_and_a_live_loop_passes(
    redis_client: redis.Redis, tmp_path: Path, service_env: dict[str, str]
) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    beat = tmp_path / "heartbeat"
    release = threading.Event()

    class Hangs(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            release.wait(60)
            return per_message(self.handle)(messages)

    runner = StageRunner(
        redis_client, Hangs(), FAST, job_ttl_seconds=600, consumer="a", heartbeat_file=beat, heartbeat_max_age_seconds=1
    )
    worker = threading.Thread(target=runner.run, daemon=True)
    worker.start()

    def healthcheck(max_age: float) -> int:
        env = {**os.environ, **service_env, "FECAPASS_HEARTBEAT_FILE": str(beat)}
        env["FECAPASS_HEARTBEAT_MAX_AGE_SECONDS"] = str(max_age)
        command = [sys.executable, "-m", "operations.cli", "healthcheck", "--heartbeat"]
        return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode

    try:
        wait_until(beat.exists, 30, "the first heartbeat")
        info = json.loads(beat.read_text())
        assert info["stage"] == "align" and info["consumer"] == "a"
        first = beat.stat().st_mtime
        wait_until(lambda: beat.stat().st_mtime > first, 30, "an idle loop to beat again")
        assert healthcheck(max_age=30) == 0
        enqueue(redis_client, "hang")
        wait_until(lambda: heartbeat_problem(beat, 1) is not None, 30, "the heartbeat to go stale")
        assert "stuck" in str(heartbeat_problem(beat, 1))
        assert healthcheck(max_age=1) == 1
        release.set()
        wait_until(lambda: redis_client.xlen(Stage.EMBED.stream) == 1, 30, "the batch to finish")
        wait_until(lambda: heartbeat_problem(beat, 1) is None, 30, "the heartbeat to resume")
    finally:
        release.set()
        runner.request_stop()
        worker.join(30)
    assert heartbeat_problem(tmp_path / "never-written", 60) is not None


def test_replaying_the_dead_letter_of_a_done_job_does_not_reopen_it(redis_client: redis.Redis) -> None:
    from operations import dlq

    ensure_group(redis_client, Stage.ALIGN)
    finish_job(redis_client, "replayed-done")
    redis_client.xadd(Stage.ALIGN.dead_letter_stream, {"v": "1", "job_id": "replayed-done", "kind": "search"})
    [letter] = dlq.entries(redis_client, Stage.ALIGN)
    dlq.replay(redis_client, letter, job_ttl_seconds=600)
    assert job(redis_client, "replayed-done")["state"] == "done"
    assert redis_client.xlen(Stage.ALIGN.stream) == 1  # the entry is back; the stage will ack it unrun


def test_the_scripts_survive_redis_forgetting_them(redis_client: redis.Redis) -> None:
    """A Redis restart empties its script cache: the runner loads its scripts again instead of failing."""
    ensure_group(redis_client, Stage.ALIGN)
    runner = StageRunner(redis_client, ScriptedHandler(), FAST, job_ttl_seconds=600, consumer="a")
    enqueue(redis_client, "before-flush")
    runner.run_once()
    redis_client.script_flush()
    enqueue(redis_client, "after-flush")
    runner.run_once()
    assert redis_client.xlen(Stage.EMBED.stream) == 2 and pending_count(redis_client) == 0
    assert job(redis_client, "after-flush")["state"] == "aligning"
