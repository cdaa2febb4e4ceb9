"""The one stage runner: every stage process is this loop around a handler.

It owns all stream commands: XREADGROUP (block, count), the handler call, then in one MULTI/EXEC the
XADD of the outputs, the status change and the XACK, so an entry is acknowledged only together with
its durable output. Entries idle past the visibility timeout are taken over with XAUTOCLAIM; an entry
delivered more than ``max_deliveries`` times goes to ``<stream>:dead`` with its last error. SIGTERM
stops reading, lets the batch in hand finish and be acked, then leaves the group cleanly.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import cast

import redis
import structlog
from redis.typing import EncodableT, FieldT

from common import status, webhooks
from common.errors import DependencyUnavailable, JobFailed, PoisonMessage, StageError
from common.handlers import HandlerResult, Outcome, StageHandler
from common.metrics import STAGE_BATCH_SECONDS, STAGE_BATCH_SIZE, STAGE_ENTRIES
from common.settings import StreamSettings
from schemas.jobs import STAGE_STATE, ErrorCode, JobState
from schemas.streams import MalformedMessage, Stage, StreamMessage
from schemas.text import decode_text as _text  # lenient: a non-UTF-8 byte must not crash the loop

log = structlog.get_logger(__name__)


@dataclass
class Entry:
    message_id: str
    fields: dict[bytes, bytes]
    deliveries: int


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def ensure_group(client: redis.Redis, stage: Stage) -> None:
    try:
        client.xgroup_create(stage.stream, stage.group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def errors_key(stage: Stage) -> str:
    """Hash of the last error per pending message id, so a dead letter can say why."""
    return f"{stage.stream}:errors"


class StageRunner:
    def __init__(
        self,
        client: redis.Redis,
        handler: StageHandler,
        settings: StreamSettings,
        *,
        job_ttl_seconds: int,
        consumer: str | None = None,
    ) -> None:
        self.client = client
        self.handler = handler
        self.stage = handler.stage
        self.settings = settings
        self.job_ttl_seconds = job_ttl_seconds
        self.consumer = consumer or consumer_name()
        self._stopping = False
        self._next_claim = 0.0
        self._next_housekeeping = 0.0
        self._failures = 0
        self.log = log.bind(stage=self.stage.value, consumer=self.consumer)

    # -- lifecycle -------------------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        if self._stopping:  # a second signal: leave now; pending entries will be claimed by others
            raise SystemExit(1)
        self.log.info("stage.draining", grace_seconds=self.settings.drain_seconds)
        self._stopping = True

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.request_stop()
            # Past the grace period, leave with the batch unacked: another consumer claims it.
            signal.setitimer(signal.ITIMER_REAL, max(self.settings.drain_seconds, 0.001))

        def on_grace_over(signum: int, frame: FrameType | None) -> None:
            self.log.warning("stage.drain_timeout")
            raise SystemExit(1)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGALRM, on_grace_over)

    def run(self, *, max_iterations: int | None = None) -> None:
        self._with_redis(lambda: ensure_group(self.client, self.stage))
        self.log.info("stage.started", stream=self.stage.stream, group=self.stage.group)
        iterations = 0
        while not self._stopping and (max_iterations is None or iterations < max_iterations):
            self._with_redis(self.run_once)
            if time.monotonic() >= self._next_housekeeping:
                self._with_redis(self.housekeeping)
            iterations += 1
        self._with_redis(self._leave_group, retry=False)
        self.log.info("stage.stopped")

    def _with_redis(self, action: Callable[[], object], *, retry: bool = True) -> None:
        """Run one step; when Redis is away (restart, failover), back off and let the loop try again."""
        try:
            action()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            self.log.warning("stage.redis_unavailable", error=str(exc))
            if retry:
                self._back_off()
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis came back without our group (data lost): recreate it; nothing else can be done.
            self.log.error("stage.group_missing", error=str(exc))
            ensure_group(self.client, self.stage)

    def _back_off(self) -> None:
        """Sleep base * 2^failures, capped, times a random factor so that replicas do not retry in step."""
        self._failures += 1
        cap = self.settings.retry_backoff_max_ms / 1000
        delay = min(cap, self.settings.retry_backoff_ms / 1000 * 2 ** (self._failures - 1)) * random.uniform(0.5, 1.5)
        deadline = time.monotonic() + delay
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _leave_group(self) -> None:
        pending = self.client.xpending_range(
            self.stage.stream, self.stage.group, min="-", max="+", count=1, consumername=self.consumer
        )
        if not pending:
            self.client.xgroup_delconsumer(self.stage.stream, self.stage.group, self.consumer)

    # -- housekeeping ----------------------------------------------------------------------------------

    def housekeeping(self) -> None:
        self._next_housekeeping = time.monotonic() + self.settings.housekeeping_seconds
        self.trim()
        self.remove_idle_consumers()

    def trim(self) -> int:
        """Drop entries every group has acknowledged and that are older than the retention window."""
        groups = self.client.xinfo_groups(self.stage.stream)
        if not groups:
            return 0
        horizon_ms = int((time.time() - self.settings.stream_retention_seconds) * 1000)
        safe = [(horizon_ms, 0)]
        for group in groups:
            safe.append(_parse_id(_text(group["last-delivered-id"])))
            if int(group["pending"]):
                oldest = self.client.xpending(self.stage.stream, _text(group["name"]))["min"]
                safe.append(_parse_id(_text(oldest)))
        minimum = min(safe)
        trimmed = int(self.client.xtrim(self.stage.stream, minid=f"{minimum[0]}-{minimum[1]}", approximate=False))
        if trimmed:
            self.log.info("stage.trimmed", entries=trimmed)
        return trimmed

    def remove_idle_consumers(self) -> list[str]:
        removed = []
        for consumer in self.client.xinfo_consumers(self.stage.stream, self.stage.group):
            name = _text(consumer["name"])
            if (
                name != self.consumer
                and int(consumer["pending"]) == 0
                and int(consumer["idle"]) > self.settings.consumer_idle_ms
            ):
                self.client.xgroup_delconsumer(self.stage.stream, self.stage.group, name)
                removed.append(name)
        if removed:
            self.log.info("stage.removed_idle_consumers", consumers=removed)
        return removed

    # -- one iteration ---------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim stale work or read new work, process it; returns how many entries were handled."""
        entries = self._claim_stale() if time.monotonic() >= self._next_claim else []
        if not entries:
            entries = self._read_new()
        if entries:
            self._process(entries)
        return len(entries)

    def _read_new(self) -> list[Entry]:
        response = self.client.xreadgroup(
            self.stage.group,
            self.consumer,
            {self.stage.stream: ">"},
            count=self.settings.read_count,
            block=self.settings.block_ms,
        )
        entries: list[Entry] = []
        # RESP2 (the client's default protocol) answers a list of [stream, entries] pairs.
        stream_batches = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], response or [])
        for _stream, messages in stream_batches:
            for message_id, fields in messages:
                entries.append(Entry(_text(message_id), fields or {}, deliveries=1))
        return entries

    def _claim_stale(self) -> list[Entry]:
        self._next_claim = time.monotonic() + self.settings.claim_idle_ms / 2000
        claimed = self.client.xautoclaim(
            self.stage.stream,
            self.stage.group,
            self.consumer,
            min_idle_time=self.settings.claim_idle_ms,
            start_id="0-0",
            count=self.settings.read_count,
        )
        messages = claimed[1]
        if not messages:
            return []
        self._next_claim = 0.0  # there may be more stale work: look again next iteration
        ids = [_text(message_id) for message_id, _ in messages]
        counts = {
            _text(row["message_id"]): int(row["times_delivered"])
            for row in self.client.xpending_range(
                self.stage.stream,
                self.stage.group,
                min=ids[0],
                max=ids[-1],
                count=len(ids) + 100,
                consumername=self.consumer,
            )
        }
        self.log.warning("stage.claimed_stale", count=len(ids))
        return [
            Entry(message_id, fields or {}, counts.get(message_id, 1))
            for message_id, (_, fields) in zip(ids, messages, strict=True)
        ]

    def _process(self, entries: list[Entry]) -> None:
        runnable: list[tuple[Entry, StreamMessage]] = []
        for entry in entries:
            if entry.deliveries > self.settings.max_deliveries:
                last_error = self.client.hget(errors_key(self.stage), entry.message_id)
                self._dead_letter(
                    entry,
                    None,
                    ErrorCode.TOO_MANY_DELIVERIES,
                    f"delivered {entry.deliveries} times; last error: {_text(last_error or b'unknown')}",
                )
                continue
            try:
                runnable.append((entry, self.handler.message_type.from_fields(entry.fields)))
            except MalformedMessage as exc:
                self._dead_letter(entry, None, ErrorCode.MALFORMED_MESSAGE, str(exc))
        if not runnable:
            return

        if self.stage in STAGE_STATE:
            with self.client.pipeline(transaction=False) as pipe:
                for _, message in runnable:
                    status.queue_stage_started(pipe, message.job_id, self.stage, self.job_ttl_seconds)
                pipe.execute()

        batch = runnable
        outage_started: float | None = None
        while batch:
            results, elapsed_ms = self._run_handler(batch)
            waiting: list[tuple[Entry, StreamMessage]] = []
            for (entry, message), result in zip(batch, results, strict=True):
                if isinstance(result, DependencyUnavailable) and not self._stopping:
                    self._record_retry(entry, result)
                    waiting.append((entry, message))
                else:
                    self._settle(entry, message, result, len(batch), elapsed_ms)
            if all(isinstance(r, BaseException) and not isinstance(r, StageError) for r in results):
                self._back_off()  # nothing went through: do not spin
            else:
                self._failures = 0
            if not waiting:
                return
            outage_started = outage_started or time.monotonic()
            if self._stopping or time.monotonic() - outage_started > self.settings.outage_retry_seconds:
                # Left pending: another consumer (or this one) claims them later, counting a delivery.
                self.log.warning("stage.outage_retry_given_up", entries=len(waiting))
                return
            self.log.warning("stage.dependency_unavailable", entries=len(waiting), error=str(results[0]))
            # Keep the entries ours without counting a delivery (JUSTID), so nobody claims them meanwhile.
            self.client.xclaim(
                self.stage.stream,
                self.stage.group,
                self.consumer,
                min_idle_time=0,
                message_ids=[entry.message_id for entry, _ in waiting],
                justid=True,
            )
            batch = waiting

    def _run_handler(self, batch: list[tuple[Entry, StreamMessage]]) -> tuple[list[HandlerResult], float]:
        started = time.perf_counter()
        try:
            results = self.handler.handle_batch([message for _, message in batch])
        except Exception as exc:  # a batch-wide failure: every entry shares it
            results = [exc] * len(batch)
        elapsed_ms = (time.perf_counter() - started) * 1000
        STAGE_BATCH_SECONDS.labels(self.stage.value).observe(elapsed_ms / 1000)
        STAGE_BATCH_SIZE.labels(self.stage.value).observe(len(batch))
        return results, elapsed_ms

    def _settle(
        self, entry: Entry, message: StreamMessage, result: HandlerResult, batch_size: int, elapsed_ms: float
    ) -> None:
        bound = self.log.bind(job_id=message.job_id, message_id=entry.message_id)
        if isinstance(result, Outcome):
            self._complete(entry, message, result)
            STAGE_ENTRIES.labels(self.stage.value, "processed").inc()
            bound.info("stage.handled", batch=batch_size, batch_ms=round(elapsed_ms, 1))
        elif isinstance(result, JobFailed):
            self._fail_job(entry, message, result)
            STAGE_ENTRIES.labels(self.stage.value, "job_failed").inc()
            bound.info("stage.job_failed", code=str(result.code), reason=result.message)
        elif isinstance(result, PoisonMessage):
            self._dead_letter(entry, message, result.code, result.message)
        else:
            self._record_retry(entry, result)
            STAGE_ENTRIES.labels(self.stage.value, "retried").inc()
            bound.warning("stage.retry_later", deliveries=entry.deliveries, error=repr(result))

    # -- outcomes, each one MULTI/EXEC -----------------------------------------------------------------

    def _complete(self, entry: Entry, message: StreamMessage, outcome: Outcome) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            if outcome.forward is not None:
                next_stage = self.stage.next
                if next_stage is None:
                    raise RuntimeError(f"{self.stage} has no next stage to forward to")
                pipe.xadd(next_stage.stream, outcome.forward.to_fields())
            if self.stage in STAGE_STATE:
                status.queue_stage_finished(
                    pipe, message.job_id, self.stage, self.job_ttl_seconds, outcome.status_fields
                )
            if outcome.result is not None:
                status.queue_done(pipe, message.job_id, outcome.result, self.job_ttl_seconds)
                webhooks.queue_job_finished(pipe, message, JobState.DONE, result=outcome.result)
            pipe.xack(self.stage.stream, self.stage.group, entry.message_id)
            pipe.hdel(errors_key(self.stage), entry.message_id)
            pipe.execute()

    def _fail_job(self, entry: Entry, message: StreamMessage, error: StageError) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            status.queue_stage_finished(pipe, message.job_id, self.stage, self.job_ttl_seconds)
            status.queue_failed(pipe, message.job_id, error.code, error.message, self.job_ttl_seconds)
            webhooks.queue_job_finished(pipe, message, JobState.FAILED, error=(str(error.code), error.message))
            pipe.xack(self.stage.stream, self.stage.group, entry.message_id)
            pipe.hdel(errors_key(self.stage), entry.message_id)
            pipe.execute()

    def _dead_letter(self, entry: Entry, message: StreamMessage | None, code: ErrorCode, reason: str) -> None:
        job_id = message.job_id if message else _text(entry.fields.get(b"job_id", b""))
        dead_fields: dict[FieldT, EncodableT] = {_text(k): _text(v) for k, v in entry.fields.items()}
        dead_fields.update(
            {
                "dead_original_id": entry.message_id,
                "dead_stage": self.stage.value,
                "dead_error_code": str(code),
                "dead_error": reason[:2000],
                "dead_deliveries": str(entry.deliveries),
                "dead_at": status.now(),
            }
        )
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.stage.dead_letter_stream, dead_fields)
            if job_id and self.stage in STAGE_STATE:  # a dead webhook does not un-finish its job
                status.queue_failed(pipe, job_id, code, reason, self.job_ttl_seconds)
                if message is not None:
                    webhooks.queue_job_finished(pipe, message, JobState.FAILED, error=(str(code), reason))
            pipe.xack(self.stage.stream, self.stage.group, entry.message_id)
            pipe.hdel(errors_key(self.stage), entry.message_id)
            pipe.execute()
        STAGE_ENTRIES.labels(self.stage.value, "dead_lettered").inc()
        self.log.error(
            "stage.dead_lettered",
            job_id=job_id or None,
            message_id=entry.message_id,
            code=str(code),
            reason=reason,
        )

    def _record_retry(self, entry: Entry, error: BaseException) -> None:
        self.client.hset(errors_key(self.stage), entry.message_id, f"{type(error).__name__}: {error}"[:2000])


def _parse_id(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)
