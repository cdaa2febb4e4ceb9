"""The shared stage runner against a real Valkey: acks, redelivery, dead letters, drain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.errors import DependencyUnavailable, JobFailed, PoisonMessage, TransientError
from common.handlers import HandlerResult, Outcome, per_message
from common.runner import StageRunner, ensure_group, errors_key
from common.settings import StreamSettings
from operations.services import LocalServices
from schemas.jobs import ErrorCode, job_key
from schemas.results import FinishedResult, ReindexResult
from schemas.streams import JobKind, JobMessage, Stage
from tests.conftest import redis_client_url

FAST = StreamSettings(read_count=8, block_ms=50, claim_idle_ms=100, max_deliveries=3)


class ScriptedHandler:
    """Align-stage stand-in whose behaviour per job is chosen by the test."""

    stage = Stage.ALIGN
    message_type = JobMessage

    def __init__(self, behaviour: dict[str, list[BaseException | None]] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.calls: list[str] = []

    def handle(self, message: JobMessage) -> Outcome:
        self.calls.append(message.job_id)
        script = self.behaviour.get(message.job_id, [])
        error = script.pop(0) if script else None
        if error is not None:
            raise error
        return Outcome(forward=message)

    def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
        return per_message(self.handle)(messages)


def enqueue(client: redis.Redis, job_id: str, stage: Stage = Stage.ALIGN) -> str:
    message = JobMessage(job_id=job_id, kind=JobKind.SEARCH, image_key=f"originals/{job_id}")
    client.hset(job_key(job_id), mapping={"kind": "search", "state": "queued"})
    return client.xadd(stage.stream, message.to_fields()).decode()


def runner(client: redis.Redis, handler: ScriptedHandler, consumer: str = "test-a") -> StageRunner:
    return StageRunner(client, handler, FAST, job_ttl_seconds=600, consumer=consumer)


def pending_count(client: redis.Redis, stage: Stage = Stage.ALIGN) -> int:
    return int(client.xpending(stage.stream, stage.group)["pending"])


def job(client: redis.Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(job_key(job_id)).items()}


def test_success_forwards_then_acks(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "ok-1")
    runner(redis_client, ScriptedHandler()).run_once()
    forwarded = redis_client.xrange(Stage.EMBED.stream)
    assert len(forwarded) == 1
    assert JobMessage.from_fields(forwarded[0][1]).job_id == "ok-1"
    assert pending_count(redis_client) == 0
    state = job(redis_client, "ok-1")
    assert state["state"] == "aligning" and "align_finished_at" in state


def test_failure_leaves_entry_pending_and_forwards_nothing(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "flaky")
    handler = ScriptedHandler({"flaky": [TransientError("S3 down")]})
    stage = runner(redis_client, handler)
    stage.run_once()
    assert redis_client.xlen(Stage.EMBED.stream) == 0
    assert pending_count(redis_client) == 1  # not acked: the output was not written
    assert b"S3 down" in redis_client.hget(errors_key(Stage.ALIGN), redis_client.xrange(Stage.ALIGN.stream)[0][0])
    # After the visibility timeout the entry is claimed again and succeeds.

    time.sleep(0.15)
    stage.run_once()
    assert handler.calls == ["flaky", "flaky"]
    assert redis_client.xlen(Stage.EMBED.stream) == 1
    assert pending_count(redis_client) == 0
    assert redis_client.hlen(errors_key(Stage.ALIGN)) == 0


def test_entry_of_a_dead_consumer_is_claimed_by_a_live_one(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "orphan")
    # A consumer reads the entry and dies before acking.
    redis_client.xreadgroup(Stage.ALIGN.group, "dead-consumer", {Stage.ALIGN.stream: ">"}, count=1)
    assert pending_count(redis_client) == 1

    time.sleep(0.15)
    handler = ScriptedHandler()
    runner(redis_client, handler, consumer="live").run_once()
    assert handler.calls == ["orphan"]
    assert redis_client.xlen(Stage.EMBED.stream) == 1
    assert pending_count(redis_client) == 0


def test_dead_letter_after_max_deliveries(redis_client: redis.Redis) -> None:

    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "always-fails")
    enqueue(redis_client, "healthy")
    handler = ScriptedHandler({"always-fails": [RuntimeError("boom")] * 10})
    stage = runner(redis_client, handler)
    for _ in range(12):
        stage.run_once()
        time.sleep(0.12)
        if redis_client.xlen(Stage.ALIGN.dead_letter_stream):
            break
    assert handler.calls.count("always-fails") == FAST.max_deliveries
    dead = redis_client.xrange(Stage.ALIGN.dead_letter_stream)
    assert len(dead) == 1
    fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert fields["job_id"] == "always-fails"
    assert fields["dead_error_code"] == ErrorCode.TOO_MANY_DELIVERIES
    assert "RuntimeError: boom" in fields["dead_error"]
    assert fields["dead_stage"] == "align"
    state = job(redis_client, "always-fails")
    assert state["state"] == "failed" and state["error_code"] == "too_many_deliveries"
    # The other message was served normally and nothing is left pending.
    assert job(redis_client, "healthy")["state"] == "aligning"
    assert pending_count(redis_client) == 0


def test_malformed_entry_is_dead_lettered_at_once(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    redis_client.xadd(Stage.ALIGN.stream, {"v": "1", "job_id": "bad", "kind": "paint"})
    redis_client.xadd(Stage.ALIGN.stream, {"garbage": "\x00\x01"})
    enqueue(redis_client, "fine")
    handler = ScriptedHandler()
    runner(redis_client, handler).run_once()
    assert handler.calls == ["fine"]
    dead = redis_client.xrange(Stage.ALIGN.dead_letter_stream)
    assert [d[1][b"dead_error_code"] for d in dead] == [b"malformed_message", b"malformed_message"]
    assert pending_count(redis_client) == 0


def test_job_failed_is_acked_and_reported_not_dead_lettered(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "faceless")
    handler = ScriptedHandler({"faceless": [JobFailed(ErrorCode.NO_FACE, "no face found")]})
    runner(redis_client, handler).run_once()
    state = job(redis_client, "faceless")
    assert state["state"] == "failed" and state["error_code"] == "no_face"
    assert redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0
    assert redis_client.xlen(Stage.EMBED.stream) == 0
    assert pending_count(redis_client) == 0


def test_poison_message_is_dead_lettered_with_its_reason(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "poison")
    handler = ScriptedHandler({"poison": [PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "face without keypoints")]})
    runner(redis_client, handler).run_once()
    dead = redis_client.xrange(Stage.ALIGN.dead_letter_stream)
    assert dead[0][1][b"dead_error"] == b"face without keypoints"
    assert job(redis_client, "poison")["state"] == "failed"


def test_final_result_marks_job_done_and_publishes(redis_client: redis.Redis) -> None:
    class Finisher(ScriptedHandler):
        stage = Stage.INDEX

        def handle(self, message: JobMessage) -> Outcome:
            return Outcome(result=FinishedResult.without_photos(ReindexResult(face_id=42, model_pack="p")))

    ensure_group(redis_client, Stage.INDEX)
    pubsub = redis_client.pubsub()
    pubsub.subscribe("fecapass:jobs:finished")
    pubsub.get_message(timeout=1)
    enqueue(redis_client, "final", stage=Stage.INDEX)
    StageRunner(redis_client, Finisher(), FAST, job_ttl_seconds=600, consumer="x").run_once()
    state = job(redis_client, "final")
    assert state["state"] == "done" and json.loads(state["result"]) == {"face_id": 42, "model_pack": "p"}
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == b"final"
    pubsub.close()


def test_stop_request_finishes_batch_and_leaves_group(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    for index in range(3):
        enqueue(redis_client, f"drain-{index}")

    class StopsMidway(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            stage.request_stop()  # SIGTERM arrives while the batch is in hand
            return super().handle_batch(messages)

    stage = runner(redis_client, StopsMidway())
    stage.run()
    assert redis_client.xlen(Stage.EMBED.stream) == 3  # the whole batch finished and was acked
    assert pending_count(redis_client) == 0
    consumers = redis_client.xinfo_consumers(Stage.ALIGN.stream, Stage.ALIGN.group)
    assert all(c["name"] != b"test-a" and c["name"] != "test-a" for c in consumers)


@pytest.mark.parametrize("stage", list(Stage))
def test_groups_are_created_idempotently(redis_client: redis.Redis, stage: Stage) -> None:
    ensure_group(redis_client, stage)
    ensure_group(redis_client, stage)
    groups = redis_client.xinfo_groups(stage.stream)
    assert [g["name"] for g in groups] in ([stage.group.encode()], [stage.group])


def test_trim_keeps_unacknowledged_and_recent_entries(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    ids = [enqueue(redis_client, f"trim-{index}") for index in range(6)]
    # Two entries are delivered and acked, one is delivered and left pending, three are never delivered.
    stage = StageRunner(
        redis_client,
        ScriptedHandler(),
        FAST.model_copy(update={"read_count": 2, "stream_retention_seconds": 0}),
        job_ttl_seconds=600,
        consumer="trimmer",
    )
    stage.run_once()
    redis_client.xreadgroup(Stage.ALIGN.group, "holder", {Stage.ALIGN.stream: ">"}, count=1)
    assert stage.trim() == 2
    remaining = [entry[0].decode() for entry in redis_client.xrange(Stage.ALIGN.stream)]
    assert remaining == ids[2:]  # the pending one and the undelivered ones stay
    recent = runner(redis_client, ScriptedHandler())  # default retention: an hour
    assert recent.trim() == 0


def test_idle_consumers_without_pending_work_are_removed(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    redis_client.xgroup_createconsumer(Stage.ALIGN.stream, Stage.ALIGN.group, "gone")
    enqueue(redis_client, "held")
    redis_client.xreadgroup(Stage.ALIGN.group, "gone-with-work", {Stage.ALIGN.stream: ">"}, count=1)
    time.sleep(1.1)
    stage = StageRunner(
        redis_client,
        ScriptedHandler(),
        FAST.model_copy(update={"consumer_idle_ms": 1000}),
        job_ttl_seconds=600,
        consumer="cleaner",
    )
    assert stage.remove_idle_consumers() == ["gone"]  # the one holding an entry stays until it is claimed
    names = {c["name"].decode() for c in redis_client.xinfo_consumers(Stage.ALIGN.stream, Stage.ALIGN.group)}
    assert names == {"gone-with-work"}


def test_failed_batches_back_off_exponentially(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "down")
    handler = ScriptedHandler({"down": [TransientError("database down")] * 3})
    settings = FAST.model_copy(update={"retry_backoff_ms": 100, "claim_idle_ms": 1, "max_deliveries": 10})
    stage = StageRunner(redis_client, handler, settings, job_ttl_seconds=600, consumer="backer")
    waits = []
    for _ in range(3):
        started = time.monotonic()
        stage.run_once()
        waits.append(time.monotonic() - started)
    # 100 ms, 200 ms, 400 ms, each times a jitter factor in [0.5, 1.5].
    assert 0.04 < waits[0] < 0.2 and 0.09 < waits[1] < 0.35 and 0.19 < waits[2] < 0.65, waits
    stage.run_once()  # the dependency is back: success resets the backoff
    assert redis_client.xlen(Stage.EMBED.stream) == 1


def test_runner_survives_redis_going_away(redis_client: redis.Redis) -> None:
    # Nothing listens there; no client-side retries, so the runner's own handling is what is tested.
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    stage = StageRunner(
        dead,
        ScriptedHandler(),
        FAST.model_copy(update={"retry_backoff_ms": 10}),
        job_ttl_seconds=600,
        consumer="lonely",
    )
    stage.run(max_iterations=3)  # logs and backs off instead of crashing
    assert stage._failures >= 3


def test_dead_letters_can_be_replayed_and_purged(redis_client: redis.Redis) -> None:
    from operations import dlq

    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "revived")
    handler = ScriptedHandler({"revived": [PoisonMessage(ErrorCode.MALFORMED_MESSAGE, "bad once")]})
    stage = runner(redis_client, handler)
    stage.run_once()
    assert job(redis_client, "revived")["state"] == "failed"
    [letter] = dlq.entries(redis_client, Stage.ALIGN)
    assert letter.fields["dead_error"] == "bad once" and "dead_error" not in letter.original_fields
    dlq.replay(redis_client, letter, job_ttl_seconds=600)
    assert redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0
    assert job(redis_client, "revived")["state"] == "aligning" and "error_code" not in job(redis_client, "revived")
    stage.run_once()  # the handler now succeeds
    assert JobMessage.from_fields(redis_client.xrange(Stage.EMBED.stream)[-1][1]).job_id == "revived"
    redis_client.xadd(Stage.ALIGN.dead_letter_stream, {"job_id": "x"})
    assert dlq.purge(redis_client, Stage.ALIGN) == 1 and redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0


def test_a_job_whose_hash_is_gone_does_not_come_back(redis_client: redis.Redis) -> None:
    # Gone: expired while queued, or erased with its person. Its entries still run (the index stage refuses an
    # erased one and deletes what it left), but no stage puts it back in flight: before, a stage recreated it.
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "expired")
    redis_client.delete(job_key("expired"))
    handler = ScriptedHandler()
    runner(redis_client, handler).run_once()
    assert not redis_client.exists(job_key("expired"))
    assert handler.calls == ["expired"] and pending_count(redis_client) == 0
    assert redis_client.hlen(errors_key(Stage.ALIGN)) == 0


def test_an_outage_is_retried_in_place_without_counting_deliveries(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "outage")
    handler = ScriptedHandler({"outage": [DependencyUnavailable("S3 down")] * 4})
    # One delivery allowed: only in-place retries can get this entry through.
    settings = FAST.model_copy(update={"retry_backoff_ms": 10, "max_deliveries": 1, "claim_idle_ms": 50})
    StageRunner(redis_client, handler, settings, job_ttl_seconds=600, consumer="patient").run_once()
    assert handler.calls == ["outage"] * 5
    assert redis_client.xlen(Stage.EMBED.stream) == 1 and pending_count(redis_client) == 0
    assert redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0


def test_an_outage_longer_than_the_budget_falls_back_to_redelivery(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "long-outage")
    handler = ScriptedHandler({"long-outage": [DependencyUnavailable("database down")] * 100})
    settings = FAST.model_copy(update={"retry_backoff_ms": 20, "outage_retry_seconds": 0.1})
    StageRunner(redis_client, handler, settings, job_ttl_seconds=600, consumer="budget").run_once()
    assert 2 <= len(handler.calls) < 20
    assert pending_count(redis_client) == 1  # left for a later claim


def test_dlq_command_lists_replays_and_purges(redis_client: redis.Redis, services: LocalServices) -> None:
    redis_client.xadd(
        Stage.ALIGN.dead_letter_stream,
        {
            "v": "1",
            "job_id": "cli-dead",
            "kind": "search",
            "image_key": "k",
            "dead_error_code": "malformed_message",
            "dead_error": "broken on purpose",
        },
    )
    env = {**os.environ, **services.environment(), "FECAPASS_REDIS_URL": redis_client_url(services)}

    def dlq(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "operations.cli", "dlq", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    listing = dlq("list", "--stage", "align")
    assert "fecapass:align:dead: 1" in listing and "cli-dead" in listing and "broken on purpose" in listing
    assert "replayed 1" in dlq("replay", "--stage", "align")
    replayed = redis_client.xrange(Stage.ALIGN.stream)[-1][1]
    assert replayed[b"job_id"] == b"cli-dead" and b"dead_error" not in replayed
    redis_client.xadd(Stage.ALIGN.dead_letter_stream, {"job_id": "again"})
    assert "removed 1" in dlq("purge", "--stage", "align")
    assert redis_client.xlen(Stage.ALIGN.dead_letter_stream) == 0
