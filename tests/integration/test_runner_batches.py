"""The runner's batched writes and read-ahead against a real Valkey: a batch starts in one script and settles in one
script, each entry still fenced on its own; the next batch is read with the write that settles the last one; every
entry is run and acknowledged once, whoever reads it and however often it is delivered."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import pytest
import redis

from common.handlers import HandlerResult, Outcome
from common.runner import StageRunner, ensure_group
from common.settings import StreamSettings
from schemas.results import FinishedResult, ReindexResult
from schemas.streams import JobMessage, Stage
from tests.integration.test_exactly_once import dead_letters, finish_job, pending_of
from tests.integration.test_runner import FAST, ScriptedHandler, enqueue, job, pending_count

ONE_AT_A_TIME = StreamSettings(read_count=1, block_ms=50, claim_idle_ms=100, max_deliveries=3)


def forwarded(client: redis.Redis, stage: Stage = Stage.EMBED) -> list[str]:
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stage.stream))
    return [fields[b"job_id"].decode() for _, fields in entries]


def group_info(client: redis.Redis, stage: Stage = Stage.ALIGN) -> dict[str, Any]:
    [info] = [g for g in client.xinfo_groups(stage.stream) if g["name"] in (stage.group, stage.group.encode())]
    return dict(info)


class Finisher(ScriptedHandler):
    """Index-stage stand-in: every message finishes its job."""

    stage = Stage.INDEX

    def handle(self, message: JobMessage) -> Outcome:
        self.calls.append(message.job_id)
        return Outcome(result=FinishedResult.without_photos(ReindexResult(face_id=1, model_pack="p")))


@pytest.mark.parametrize("handler_type", [ScriptedHandler, Finisher])
def test_an_entry_claimed_away_from_a_batch_writes_nothing_and_the_rest_settle(
    redis_client: redis.Redis, handler_type: type[ScriptedHandler]
) -> None:
    stage = handler_type.stage
    ensure_group(redis_client, stage)
    ids = [enqueue(redis_client, f"batch-{index}", stage) for index in range(3)]

    class LosesTheMiddleOne(handler_type):  # type: ignore[valid-type,misc]
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            redis_client.xclaim(stage.stream, stage.group, "b", 0, [ids[1]])  # another consumer took it meanwhile
            results: list[HandlerResult] = super().handle_batch(messages)
            return results

    handler = LosesTheMiddleOne()
    StageRunner(redis_client, handler, FAST, job_ttl_seconds=600, consumer="a").run_once()
    assert handler.calls == ["batch-0", "batch-1", "batch-2"]  # one batch
    lost = job(redis_client, "batch-1")
    # The stage-finished and finishing writes are part of the refused script: the job is as the start left it.
    assert lost["state"] == ("aligning" if stage is Stage.ALIGN else "indexing")
    assert f"{stage.value}_finished_at" not in lost and "result" not in lost
    assert pending_of(redis_client, ids[1], stage) == {"consumer": "b", "deliveries": 2}
    for settled in ("batch-0", "batch-2"):
        state = job(redis_client, settled)
        assert f"{stage.value}_finished_at" in state
        assert state["state"] == ("aligning" if stage is Stage.ALIGN else "done")
    if stage is Stage.ALIGN:
        assert forwarded(redis_client) == ["batch-0", "batch-2"]
    assert pending_count(redis_client, stage) == 1  # the lost one, now b's


def test_a_write_redis_refuses_fails_alone_and_nothing_is_written_twice(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    ids = [enqueue(redis_client, job_id) for job_id in ("before", "broken", "after")]

    class RefusedForOne(StageRunner):
        def _write(self, entry: Any, job_id: str, **sections: Any) -> None:
            if job_id == "broken":
                sections["forward"] = ["a-name-without-a-value"]  # XADD refuses it: the batch's script stops there
            super()._write(entry, job_id, **sections)

    RefusedForOne(redis_client, ScriptedHandler(), FAST, job_ttl_seconds=600, consumer="a").run_once()
    # The batch's call wrote "before" and stopped at "broken"; each alone then: "before" is acked already (not
    # forwarded again), "broken" is refused and left pending for redelivery, "after" is written.
    assert forwarded(redis_client) == ["before", "after"]
    assert pending_of(redis_client, ids[1]) == {"consumer": "a", "deliveries": 1}
    assert pending_count(redis_client) == 1
    assert "align_finished_at" not in job(redis_client, "broken")


def test_entries_read_ahead_are_each_run_and_acked_once_and_finished_before_leaving(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    for index in range(5):
        enqueue(redis_client, f"ahead-{index}")
    handler = ScriptedHandler()
    stage = StageRunner(redis_client, handler, ONE_AT_A_TIME, job_ttl_seconds=600, consumer="a")
    stage.run(max_iterations=3)
    # Three turns, each reading the next entry with its settling write; the one in hand when the loop ended ran
    # before the consumer left its group. The fifth was never read.
    assert handler.calls == ["ahead-0", "ahead-1", "ahead-2", "ahead-3"]
    assert forwarded(redis_client) == handler.calls
    for job_id in handler.calls:  # read ahead or not, each job was marked as in this stage before it ran
        assert {"align_started_at", "align_finished_at"} <= job(redis_client, job_id).keys()
    assert pending_count(redis_client) == 0
    info = group_info(redis_client)
    assert int(info["lag"]) == 1 and int(info["consumers"]) == 0


def test_a_stop_during_a_batch_reads_nothing_ahead(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    for index in range(3):
        enqueue(redis_client, f"stop-{index}")

    class StopsAtOnce(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            stage.request_stop()  # SIGTERM while the first entry is in hand
            return super().handle_batch(messages)

    stage = StageRunner(redis_client, StopsAtOnce(), ONE_AT_A_TIME, job_ttl_seconds=600, consumer="a")
    stage.run()
    assert forwarded(redis_client) == ["stop-0"]
    assert pending_count(redis_client) == 0 and int(group_info(redis_client)["lag"]) == 2


def test_an_entry_read_ahead_then_claimed_away_runs_once_by_its_new_owner(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    ids = [enqueue(redis_client, f"taken-{index}") for index in range(2)]

    class PausedWithTheOneReadAhead(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            if messages[0].job_id == "taken-1":  # read ahead; paused past the visibility timeout while it runs
                redis_client.xclaim(Stage.ALIGN.stream, Stage.ALIGN.group, "b", 0, [ids[1]])
            return super().handle_batch(messages)

    reader = PausedWithTheOneReadAhead()
    StageRunner(redis_client, reader, ONE_AT_A_TIME, job_ttl_seconds=600, consumer="a").run(max_iterations=2)
    assert reader.calls == ["taken-0", "taken-1"]
    assert forwarded(redis_client) == ["taken-0"]  # the reader's write of taken-1 was refused
    assert pending_of(redis_client, ids[1]) == {"consumer": "b", "deliveries": 2}
    time.sleep(ONE_AT_A_TIME.claim_idle_ms / 1000 * 1.5)
    rescuer = ScriptedHandler()
    StageRunner(redis_client, rescuer, ONE_AT_A_TIME, job_ttl_seconds=600, consumer="b").run_once()
    assert rescuer.calls == ["taken-1"]
    assert forwarded(redis_client) == ["taken-0", "taken-1"]
    assert pending_count(redis_client) == 0


def test_entries_read_ahead_of_finished_jobs_are_acked_unrun_or_dead_lettered_when_malformed(
    redis_client: redis.Redis,
) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    enqueue(redis_client, "first")
    finish_job(redis_client, "done-bad")
    redis_client.xadd(Stage.ALIGN.stream, {"v": "1", "job_id": "done-bad", "kind": "paint"})
    enqueue(redis_client, "done-dup")
    finish_job(redis_client, "done-dup")
    enqueue(redis_client, "live")
    handler = ScriptedHandler()
    # One at a time: each of the two entries of done jobs is read ahead by the write that settles the one before.
    StageRunner(redis_client, handler, ONE_AT_A_TIME, job_ttl_seconds=600, consumer="a").run(max_iterations=4)
    assert handler.calls == ["first", "live"]  # the duplicate of the done job never ran
    assert forwarded(redis_client) == ["first", "live"]
    assert [d["dead_error_code"] for d in dead_letters(redis_client)] == ["malformed_message"]
    for finished in ("done-bad", "done-dup"):
        state = job(redis_client, finished)
        assert state["state"] == "done" and "align_started_at" not in state and "error_code" not in state
    assert pending_count(redis_client) == 0 and int(group_info(redis_client)["lag"]) == 0


def test_a_batch_redelivered_after_a_crash_is_run_and_acked_once_each(redis_client: redis.Redis) -> None:
    ensure_group(redis_client, Stage.ALIGN)
    for index in range(4):
        enqueue(redis_client, f"crash-{index}")

    class Crashes(ScriptedHandler):
        def handle_batch(self, messages: Sequence[JobMessage]) -> list[HandlerResult]:
            raise KeyboardInterrupt  # the process dies with the whole batch in hand, nothing settled

    with pytest.raises(KeyboardInterrupt):
        StageRunner(redis_client, Crashes(), FAST, job_ttl_seconds=600, consumer="dead").run_once()
    assert pending_count(redis_client) == 4
    time.sleep(FAST.claim_idle_ms / 1000 * 1.5)
    survivor = ScriptedHandler()
    live = StageRunner(redis_client, survivor, FAST, job_ttl_seconds=600, consumer="live")
    assert live.run_once() == 4  # claimed as one batch
    assert live.run_once() == 0
    assert sorted(survivor.calls) == [f"crash-{index}" for index in range(4)]
    assert sorted(forwarded(redis_client)) == sorted(survivor.calls)
    assert pending_count(redis_client) == 0
    for index in range(4):
        assert "align_finished_at" in job(redis_client, f"crash-{index}")
