"""The one stage runner: every stage process is this loop around a handler.

It owns all stream commands: XREADGROUP (block, count), one START script that marks the batch's jobs as in this
stage, the handler call, then one SETTLE script for the batch that, entry by entry, checks the entry is still this
consumer's (its pending entry names this consumer, with the delivery count it was read with) and only then XADDs
the output, writes the job's status (forward only: see common/status.py), queues the webhook, and XACKs. A consumer
that was paused while another claimed and finished its entries (SIGSTOP, a long GC, a VM migration) therefore
writes nothing when it wakes up: ``stage.claim_lost``. While ``run`` runs, the SETTLE script also reads the next
entries already waiting and marks their jobs as in this stage, so a stage with work queued costs one round trip a
batch (a round trip costs the process far more CPU than its commands cost Redis); a stage without waits in a
blocking XREADGROUP. Entries idle
past the visibility timeout are taken over with XAUTOCLAIM; an entry delivered more than ``max_deliveries`` times
goes to ``<stream>:dead`` with its last error, before its handler sees it again. SIGTERM stops reading, lets the
batch in hand (and what was read ahead) finish and be acked, then leaves the group cleanly.

Whatever bytes an entry holds, it cannot stop a stage: the parse is guarded, and the dead-letter path reads
fields leniently. Each loop turn beats the heartbeat that ``fecapass healthcheck --heartbeat`` checks.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar, cast

import redis
import structlog

from common import status, stream_scripts, transient, webhooks
from common.errors import DependencyUnavailable, JobFailed, PoisonMessage, RetryThenFail, StageError
from common.handlers import HandlerResult, Outcome, StageHandler
from common.heartbeat import Heartbeat
from common.metrics import STAGE_BATCH_SECONDS, STAGE_BATCH_SIZE, STAGE_ENTRIES
from common.settings import StreamSettings
from schemas.jobs import JOB_DONE_CHANNEL, JOB_KEY_PREFIX, STAGE_STATE, ErrorCode, JobState, job_key
from schemas.results import FinishedResult
from schemas.streams import JobMessage, MalformedMessage, Stage, StreamMessage
from schemas.text import decode_text

log = structlog.get_logger(__name__)

# A dead letter keeps the entry readable however large or strange it was: so many fields, so many characters each.
DEAD_LETTER_FIELDS = 200
DEAD_LETTER_FIELD_CHARS = 64 * 1024
ERROR_CHARS = 2000
MAX_JOB_ID_CHARS = 200
# What a stage can do with an entry, as fecapass_stage_entries_total counts it.
OUTCOMES = ("processed", "job_failed", "retried", "dead_lettered", "claim_lost", "already_finished")

Item = TypeVar("Item")
# A stream entry as a script returns it: its id, then its fields and values in one list.
FlatEntry = tuple[bytes, list[bytes]]
Answer = TypeVar("Answer")


@dataclass
class Entry:
    message_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    started: bool = False  # read ahead, and its job marked as in this stage by the same script: no START needed


@dataclass
class Write:
    """One entry's settling write, queued until the batch's writes go to Redis together (``StageRunner.flush``)."""

    entry: Entry
    job_id: str
    freed: Sequence[str]
    sections: list[str | int]  # the five sections of the SETTLE script, each a count and its items
    written: Callable[[], None] | None = None  # what to count and log once it is written


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
        heartbeat_file: Path | None = None,
        heartbeat_max_age_seconds: float = 120.0,
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
        self._writes: list[Write] = []
        # Entries read with the last batch's settling write (``run`` reads ahead; a lone ``run_once`` does not).
        self._read_ahead = False
        self._in_hand: list[Entry] = []
        self.log = log.bind(stage=self.stage.value, consumer=self.consumer)
        # The metric children, looked up once: a labels() lookup per entry is measurable next to a Redis hop.
        self._entries = {outcome: STAGE_ENTRIES.labels(self.stage.value, outcome) for outcome in OUTCOMES}
        self._batch_seconds = STAGE_BATCH_SECONDS.labels(self.stage.value)
        self._batch_size = STAGE_BATCH_SIZE.labels(self.stage.value)
        self.heartbeat = (
            Heartbeat(heartbeat_file, self.stage.value, self.consumer, min(1.0, heartbeat_max_age_seconds / 4))
            if heartbeat_file
            else None
        )
        # An XREADGROUP blocks no longer than a quarter of the heartbeat's max age: an idle stage is alive.
        longest_block_ms = max(1, int(heartbeat_max_age_seconds * 250)) if heartbeat_file else settings.block_ms
        self.block_ms = min(settings.block_ms, longest_block_ms)
        # Scripts run by SHA (EVALSHA); redis-py loads them again when Redis answers NOSCRIPT (after a restart). None
        # runs on a pipeline: redis-py sends a SCRIPT EXISTS round trip before every pipeline that holds a script.
        self._start_script = client.register_script(stream_scripts.START)
        self._settle_script = client.register_script(stream_scripts.SETTLE)
        self._keep_script = client.register_script(stream_scripts.KEEP)
        self._note_error_script = client.register_script(stream_scripts.NOTE_ERROR)

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
        self._beat()
        self._with_redis(lambda: ensure_group(self.client, self.stage))
        self.log.info("stage.started", stream=self.stage.stream, group=self.stage.group)
        iterations = 0
        self._read_ahead = True
        while not self._stopping and (max_iterations is None or iterations < max_iterations):
            self._beat()
            self._with_redis(self.run_once)
            if time.monotonic() >= self._next_housekeeping:
                self._with_redis(self.housekeeping)
            iterations += 1
        self._read_ahead = False
        # Entries read ahead are in hand like a batch: they finish and are acked before the consumer leaves.
        while self._in_hand:
            self._with_redis(self._finish_in_hand, retry=False)
        self._with_redis(self._leave_group, retry=False)
        self.log.info("stage.stopped")

    def _finish_in_hand(self) -> None:
        """The entries read ahead, and nothing more (no claim of other consumers' work while leaving)."""
        entries, self._in_hand = self._in_hand, []
        self._process(entries)

    def _beat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat()

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
            self._beat()
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
            safe.append(_parse_id(decode_text(group["last-delivered-id"])))
            if int(group["pending"]):
                oldest = self.client.xpending(self.stage.stream, decode_text(group["name"]))["min"]
                safe.append(_parse_id(decode_text(oldest)))
        minimum = min(safe)
        trimmed = int(self.client.xtrim(self.stage.stream, minid=f"{minimum[0]}-{minimum[1]}", approximate=False))
        if trimmed:
            self.log.info("stage.trimmed", entries=trimmed)
        return trimmed

    def remove_idle_consumers(self) -> list[str]:
        removed = []
        for consumer in self.client.xinfo_consumers(self.stage.stream, self.stage.group):
            name = decode_text(consumer["name"])
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
        # What was read ahead goes first: claimed work could keep it waiting (an outage) until another consumer claims
        # it, counting a delivery.
        entries = self._claim_stale() if not self._in_hand and time.monotonic() >= self._next_claim else []
        if not entries:
            entries, self._in_hand = self._in_hand or self._read_new(), []
        if entries:
            self._process(entries)
        return len(entries)

    def _read_new(self) -> list[Entry]:
        response = self.client.xreadgroup(
            self.stage.group,
            self.consumer,
            {self.stage.stream: ">"},
            count=self.settings.read_count,
            block=self.block_ms,
        )
        entries: list[Entry] = []
        # RESP2 (the client's default protocol) answers a list of [stream, entries] pairs. An entry read with
        # ">" has never been delivered: its count is 1, so only claimed entries can be over the limit.
        stream_batches = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], response or [])
        for _stream, messages in stream_batches:
            for message_id, fields in messages:
                entries.append(Entry(decode_text(message_id), fields or {}, deliveries=1))
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
        ids = [decode_text(message_id) for message_id, _ in messages]
        counts = {
            decode_text(row["message_id"]): int(row["times_delivered"])
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
        # An id missing from our pending list was claimed away again meanwhile: it is not ours to run.
        return [
            Entry(message_id, fields or {}, counts[message_id])
            for message_id, (_, fields) in zip(ids, messages, strict=True)
            if message_id in counts
        ]

    def _process(self, entries: list[Entry]) -> None:
        self._writes = []  # a batch cut short by an error leaves its entries pending: nothing of it is written later
        parsed: list[tuple[Entry, StreamMessage]] = []
        for entry in entries:
            self._beat()
            if entry.deliveries > self.settings.max_deliveries:
                # Never handed to the handler again: a message that crashes its process ends here.
                last_error = self.client.hget(errors_key(self.stage), entry.message_id)
                self._dead_letter(
                    entry,
                    self._parse_leniently(entry),
                    ErrorCode.TOO_MANY_DELIVERIES,
                    f"delivered {entry.deliveries} times; last error: {decode_text(last_error or b'unknown')}",
                )
                continue
            try:
                message = self.handler.message_type.from_fields(entry.fields)
                if _job_id(entry, message) != message.job_id:  # the parser replaced bytes that were not UTF-8
                    raise MalformedMessage("job_id is not plain UTF-8 text")
                parsed.append((entry, message))
            except Exception as exc:  # MalformedMessage, or whatever else a hostile entry makes the parser raise
                self._dead_letter(entry, self._parse_leniently(entry), ErrorCode.MALFORMED_MESSAGE, _describe(exc))
        started = [(entry, message) for entry, message in parsed if entry.started]
        runnable = started + self._start([(entry, message) for entry, message in parsed if not entry.started])
        if not runnable:
            self.flush(read_ahead=True)
            return

        batch = runnable
        outage_started: float | None = None
        while batch:
            self._beat()
            results, elapsed_ms = self._run_handler(batch)
            waiting: list[tuple[Entry, StreamMessage]] = []
            for (entry, message), result in zip(batch, results, strict=True):
                if isinstance(result, DependencyUnavailable) and not self._stopping:
                    self._record_retry(entry, result)
                    waiting.append((entry, message))
                else:
                    self._settle(entry, message, result, len(batch), elapsed_ms)
            self.flush(read_ahead=not waiting)
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
            self.log.warning("stage.dependency_unavailable", entries=len(waiting), error=repr(results[0]))
            batch = self._keep(waiting)

    def _start(self, parsed: list[tuple[Entry, StreamMessage]]) -> list[tuple[Entry, StreamMessage]]:
        """Mark each job as in this stage (forward only), dropping entries no longer ours and those of jobs that
        are finished already (a duplicate, a replay of a done job): those are acked without being run."""
        if self.stage not in STAGE_STATE or not parsed:
            return parsed
        runnable = []
        for (entry, message), answer in zip(parsed, self._start_batch(parsed), strict=True):
            if isinstance(answer, Exception):
                self._write_failed(entry, message.job_id, answer)
            elif answer == "lost":
                self._claim_lost(entry, message.job_id)
            elif answer == "finished":
                self._entries["already_finished"].inc()
                self.log.info("stage.job_already_finished", job_id=message.job_id, message_id=entry.message_id)
            else:
                runnable.append((entry, message))
        return runnable

    def _start_batch(self, parsed: list[tuple[Entry, StreamMessage]]) -> list[str | redis.ResponseError]:
        """The START script's verdict per entry, the whole batch in one call."""
        rank, fields = status.stage_started(self.stage)

        def verdicts(batch: list[tuple[Entry, StreamMessage]]) -> list[str]:
            keys = [self.stage.stream, errors_key(self.stage), *(job_key(message.job_id) for _, message in batch)]
            fences = [item for entry, _ in batch for item in (entry.message_id, entry.deliveries)]
            args = [*self._group(), self.job_ttl_seconds, rank, len(fields), *fields, *fences]
            return [decode_text(answer) for answer in self._start_script(keys=keys, args=args)]

        return _isolated(verdicts, parsed)

    def _keep(self, waiting: list[tuple[Entry, StreamMessage]]) -> list[tuple[Entry, StreamMessage]]:
        """Keep the entries of a batch waiting out an outage ours, without counting a delivery."""
        pairs = [item for entry, _ in waiting for item in (entry.message_id, entry.deliveries)]
        kept = {decode_text(i) for i in self._keep_script(keys=[self.stage.stream], args=[*self._group(), *pairs])}
        for entry, message in waiting:
            if entry.message_id not in kept:
                self._claim_lost(entry, message.job_id)
        return [(entry, message) for entry, message in waiting if entry.message_id in kept]

    def _run_handler(self, batch: list[tuple[Entry, StreamMessage]]) -> tuple[list[HandlerResult], float]:
        started = time.perf_counter()
        try:
            results = self.handler.handle_batch([message for _, message in batch])
        except Exception as exc:  # a batch-wide failure: every entry shares it
            results = [exc] * len(batch)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._batch_seconds.observe(elapsed_ms / 1000)
        self._batch_size.observe(len(batch))
        return results, elapsed_ms

    def _settle(
        self, entry: Entry, message: StreamMessage, result: HandlerResult, batch_size: int, elapsed_ms: float
    ) -> None:
        ids = {"job_id": message.job_id, "message_id": entry.message_id}
        if isinstance(result, RetryThenFail) and entry.deliveries >= self.settings.max_deliveries:
            result = JobFailed(result.code, result.message)  # the last delivery failed too: the job fails
        if isinstance(result, Outcome):

            def handled() -> None:
                self._entries["processed"].inc()
                self.log.info("stage.handled", **ids, batch=batch_size, batch_ms=round(elapsed_ms, 1))

            self._complete(entry, message, result, handled)
        elif isinstance(result, JobFailed):
            code, reason = str(result.code), result.message

            def failed() -> None:
                self._entries["job_failed"].inc()
                self.log.info("stage.job_failed", **ids, code=code, reason=reason)

            self._fail_job(entry, message, result, failed)
        elif isinstance(result, PoisonMessage):
            self._dead_letter(entry, message, result.code, result.message)
        else:
            self._record_retry(entry, result)
            self._entries["retried"].inc()
            self.log.warning("stage.retry_later", **ids, deliveries=entry.deliveries, error=_describe(result))

    # -- outcomes: fenced writes, a batch's together in one script ------------------------------------------

    def _complete(self, entry: Entry, message: StreamMessage, outcome: Outcome, written: Callable[[], None]) -> None:
        forward: list[str] = []
        if outcome.forward is not None:
            next_stage = self.stage.next
            if next_stage is None:
                raise RuntimeError(f"{self.stage} has no next stage to forward to")
            forward = _flat(outcome.forward.to_fields())
        tracked = self.stage in STAGE_STATE
        note = _ranked(status.stage_finished(self.stage, outcome.status_fields)) if tracked else []
        final: list[str] = []
        webhook: list[str] = []
        if outcome.result is not None:
            final = _ranked(status.done(outcome.result))
            webhook = _webhook(message, JobState.DONE, result=outcome.result)
        job_id = message.job_id if tracked or outcome.result is not None else ""
        freed = [key for key in outcome.release if transient.is_transient(key)]
        if final:
            freed = transient.message_blob_keys(job_id, message)
        self._write(entry, job_id, forward=forward, note=note, final=final, webhook=webhook, freed=freed, then=written)

    def _fail_job(self, entry: Entry, message: StreamMessage, error: StageError, written: Callable[[], None]) -> None:
        if self.stage not in STAGE_STATE:  # the webhook stage: a failed delivery does not un-finish its job
            self._write(entry, "", then=written)
            return
        self._write(
            entry,
            message.job_id,
            note=_ranked(status.stage_finished(self.stage)),
            final=_ranked(status.failed(error.code, error.message)),
            webhook=_webhook(message, JobState.FAILED, error=(str(error.code), error.message)),
            freed=transient.message_blob_keys(message.job_id, message),
            then=written,
        )

    def _dead_letter(self, entry: Entry, message: StreamMessage | None, code: ErrorCode, reason: str) -> None:
        # A dead webhook does not un-finish its job; a job id the entry does not plainly carry is not used.
        job_id = _job_id(entry, message) if self.stage in STAGE_STATE else ""
        dead = _flat(_dead_letter_fields(entry, self.stage, code, reason))
        final = _ranked(status.failed(code, reason)) if job_id else []
        webhook = _webhook(message, JobState.FAILED, error=(str(code), reason)) if job_id and message else []
        # A dead job keeps no transient bytes: those its entry names go now (crops of an entry too broken to name
        # its faces, with their TTL).
        freed = transient.message_blob_keys(job_id, message) if job_id else []

        def dead_lettered() -> None:
            self._entries["dead_lettered"].inc()
            self.log.error(
                "stage.dead_lettered",
                job_id=job_id or None,
                message_id=entry.message_id,
                code=str(code),
                reason=reason[:ERROR_CHARS],
            )

        self._write(entry, job_id, dead=dead, final=final, webhook=webhook, freed=freed, then=dead_lettered)

    def _write(
        self,
        entry: Entry,
        job_id: str,
        *,
        forward: Sequence[str] = (),
        dead: Sequence[str] = (),
        note: Sequence[str] = (),
        final: Sequence[str] = (),
        webhook: Sequence[str] = (),
        freed: Sequence[str] = (),
        then: Callable[[], None] | None = None,
    ) -> None:
        """Queue the write that settles one entry; ``flush`` sends it, fenced, with the rest of its batch, and calls
        ``then`` once it is written (nothing is written when the entry is no longer ours)."""
        sections: list[str | int] = []
        for section in (forward, dead, note, final, webhook):
            sections += [len(section), *section]
        self._writes.append(Write(entry, job_id, freed, sections, then))

    def flush(self, *, read_ahead: bool = False) -> None:
        """Send the queued writes, one SETTLE script for all of them; a write that Redis refuses is left pending
        (redelivered, and dead-lettered after max_deliveries). With ``read_ahead`` (the batch is done) and while
        ``run`` runs and is not stopping, the same script reads the next entries waiting: they are in hand."""
        writes, self._writes = self._writes, []
        if not writes:
            return
        reading = read_ahead and self._read_ahead and not self._stopping and not self._in_hand
        read = self.settings.read_count if reading else 0

        def settle(batch: list[Write]) -> list[bool]:
            written, in_hand = self._settle_writes(batch, read if batch is writes else 0)
            self._in_hand += in_hand
            return written

        answers: list[bool | redis.ResponseError] = _isolated(settle, writes)
        for write, written in zip(writes, answers, strict=True):
            if isinstance(written, redis.ResponseError):
                self._write_failed(write.entry, write.job_id, written)
            elif not written:
                self._claim_lost(write.entry, write.job_id)
            elif write.written is not None:
                write.written()

    def _settle_writes(self, writes: list[Write], read_ahead: int) -> tuple[list[bool], list[Entry]]:
        """Whether each write was made (false: its entry is no longer ours), and the entries read ahead."""
        next_stage = self.stage.next
        keys = [
            self.stage.stream,
            errors_key(self.stage),
            next_stage.stream if next_stage else self.stage.stream,
            self.stage.dead_letter_stream,
            Stage.WEBHOOK.stream,
            transient.BYTES_KEY,
        ]
        rank, fields = status.stage_started(self.stage) if self.stage in STAGE_STATE and read_ahead else (0, [])
        args: list[str | int] = [*self._group(), self.job_ttl_seconds, JOB_DONE_CHANNEL, read_ahead, rank]
        args += [JOB_KEY_PREFIX, len(fields), *fields]
        for write in writes:
            keys += [job_key(write.job_id) if write.job_id else self.stage.stream, *write.freed]
            entry = write.entry
            args += [entry.message_id, entry.deliveries, write.job_id, len(write.freed), *write.sections]
        answer = cast(tuple[list[int], list[FlatEntry], list[bytes]], self._settle_script(keys=keys, args=args))
        results, read, verdicts = answer
        # An entry read with '>' has never been delivered before: its count is 1.
        in_hand = [
            Entry(decode_text(i), dict(zip(flat[::2], flat[1::2], strict=True)), 1, started=verdict == b"ok")
            for (i, flat), verdict in zip(read, verdicts, strict=True)
        ]
        return [bool(int(written)) for written in results[::2]], in_hand

    def _record_retry(self, entry: Entry, error: BaseException) -> None:
        text = f"{type(error).__name__}: {_describe(error)}"[:ERROR_CHARS]
        keys = [self.stage.stream, errors_key(self.stage)]
        if not int(self._note_error_script(keys=keys, args=[*self._fence(entry), text])):
            self.log.warning("stage.claim_lost", message_id=entry.message_id, deliveries=entry.deliveries)

    def _claim_lost(self, entry: Entry, job_id: str | None) -> None:
        self._entries["claim_lost"].inc()
        self.log.warning(
            "stage.claim_lost", job_id=job_id or None, message_id=entry.message_id, deliveries=entry.deliveries
        )

    def _write_failed(self, entry: Entry, job_id: str | None, error: Exception) -> None:
        # Left pending: it is redelivered, and dead-lettered after max_deliveries, instead of stopping the stage.
        self.log.error("stage.write_failed", job_id=job_id or None, message_id=entry.message_id, error=str(error))

    def _group(self) -> list[str]:
        return [self.stage.group, self.consumer]

    def _fence(self, entry: Entry) -> list[str | int]:
        return [*self._group(), entry.message_id, entry.deliveries]

    def _parse_leniently(self, entry: Entry) -> StreamMessage | None:
        """The entry's message as far as it can be read, for the webhook of a job that ends in a dead letter:
        the whole entry, else the fields a webhook needs."""
        try:
            return self.handler.message_type.from_fields(entry.fields)
        except Exception:  # expected: the entry is being dead-lettered because it is bad
            pass
        if not issubclass(self.handler.message_type, JobMessage):
            return None
        needed = (b"v", b"job_id", b"kind", b"image_key", b"callback_url")
        try:
            return JobMessage.from_fields({name: entry.fields[name] for name in needed if name in entry.fields})
        except Exception:  # nothing usable: the dead letter is still written, without a webhook
            return None


def _isolated(call: Callable[[list[Item]], list[Answer]], items: list[Item]) -> list[Answer | redis.ResponseError]:
    """``call`` on all ``items`` in one script; when Redis refuses that (a key of one item that is not what it should
    be: an error stops the script where it is), on each item alone, so that only the broken one fails: its answer is
    the error. The items the refused call had written already are then found not ours (acked) and write nothing."""
    try:
        return list(call(items))
    except redis.ResponseError as exc:
        if "NOGROUP" in str(exc):
            raise
        if len(items) == 1:
            return [exc]
    answers: list[Answer | redis.ResponseError] = []
    for item in items:
        try:
            answers += call([item])
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise
            answers.append(exc)
    return answers


def _job_id(entry: Entry, message: StreamMessage | None) -> str:
    """The job an entry names, when it names one plainly (UTF-8, not absurdly long); else ''."""
    raw = entry.fields.get(b"job_id")
    if message is not None and raw is None:
        return message.job_id
    try:
        job_id = raw.decode("utf-8") if isinstance(raw, bytes) else ""
    except UnicodeDecodeError:
        return ""
    return job_id if 0 < len(job_id) <= MAX_JOB_ID_CHARS and job_id.isprintable() else ""


def _dead_letter_fields(entry: Entry, stage: Stage, code: ErrorCode, reason: str) -> dict[str, str]:
    """The entry's fields as readable text (undecodable bytes as backslash escapes), cut to a size a person
    can read, then why it died."""
    fields: dict[str, str] = {}
    notes: list[str] = []
    for index, (name, value) in enumerate(entry.fields.items()):
        if index == DEAD_LETTER_FIELDS:
            notes.append(f"{len(entry.fields) - index} more fields dropped")
            break
        key = decode_text(name)[:200]
        if key.startswith("dead_"):  # the entry's own dead_* fields must not pose as this dead letter's
            key = "original_" + key
        text = decode_text(value)
        if len(text) > DEAD_LETTER_FIELD_CHARS:
            notes.append(f"{key}: {len(value)} bytes, first {DEAD_LETTER_FIELD_CHARS} characters kept")
            text = text[:DEAD_LETTER_FIELD_CHARS]
        fields[key] = text
    fields.update(
        {
            "dead_original_id": entry.message_id,
            "dead_stage": stage.value,
            "dead_error_code": str(code),
            "dead_error": reason[:ERROR_CHARS],
            "dead_deliveries": str(entry.deliveries),
            "dead_at": status.now(),
        }
    )
    if notes:
        fields["dead_truncated"] = "; ".join(notes)
    return fields


def _webhook(
    message: StreamMessage | None,
    state: JobState,
    *,
    result: FinishedResult | None = None,
    error: tuple[str, str] | None = None,
) -> list[str]:
    webhook = webhooks.finished_webhook(message, state, result=result, error=error) if message else None
    return _flat(webhook.to_fields()) if webhook else []


def _flat(fields: dict[Any, Any]) -> list[str]:
    return [item if type(item) is str else decode_text(item) for pair in fields.items() for item in pair]


def _ranked(write: tuple[int, list[str]]) -> list[str]:
    rank, fields = write
    return [str(rank), *fields]


def _describe(error: BaseException) -> str:
    """An exception as text; never raises, whatever its ``__str__`` does."""
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__}: unprintable>"


def _parse_id(stream_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)
