"""What Redis holds about a job, found and deleted when its face or user is erased: the job's status hash, the stream
entries that carry its photo keys, boxes, keypoints and embedding (every pipeline stream, the webhook stream and the
dead-letter streams), and the set of a user's jobs that the API keeps for this.

Stream entry ids are Redis server milliseconds, so a job's entries lie between its status hash's ``created_at`` and
its ``finished_at`` (now, while it runs): only that slice of each live stream is read, which keeps an erasure's cost
to the traffic of the job's own lifetime whatever the stream's length. Dead letters are kept until an operator
purges them, long after their job: those streams are read whole (they are small by design, and erasure is rare).

An entry a worker holds (read, not yet acknowledged) is left where it is: its worker carries the job on to the index
stage, which stores nothing for an erased person and deletes the job's photo and crops, and if that worker dies the
entry is claimed by another. Deleting it instead would leave the worker without its photo (retried, then
dead-lettered), or, once deleted entries are dropped from the pending list, the job's objects without anyone to
delete them. So a job with a held entry keeps its objects until the index stage deletes them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
import structlog
from redis.client import Pipeline
from redis.typing import EncodableT, FieldT

from common.runner import errors_key
from schemas.jobs import ErrorCode, JobState, job_key, user_jobs_key
from schemas.streams import PIPELINE, Stage
from schemas.text import decode_fields, decode_text

log = structlog.get_logger(__name__)

# Deletes the given entries of a pipeline stream except those in the group's pending list (a worker holds them), in
# one step so that none is delivered between the check and the delete; returns the ids it left.
_DELETE_UNLESS_HELD = """
local held = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local pending = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if type(pending) == 'table' and pending.err == nil and #pending > 0 then
    table.insert(held, id)
  else
    redis.call('XDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return held
"""

# Job timestamps come from the API and stage hosts' clocks, entry ids from the Redis server's: the slice read is
# widened by this much on each side for clocks that disagree (hosts synchronised by NTP are within milliseconds).
CLOCK_SLACK_MS = 5_000
PAGE = 500
# The set of a user's job ids outlives their last job's hash, whose TTL each stage write renews.
USER_JOBS_TTL_FACTOR = 2


def queue_job_owner(pipe: Any, user_id: int, job_id: str, job_ttl_seconds: int) -> None:
    """Queue (at submit, in the job's MULTI) the job's id into its user's set, where erasure finds in-flight jobs."""
    key = user_jobs_key(user_id)
    pipe.sadd(key, job_id)
    pipe.expire(key, job_ttl_seconds * USER_JOBS_TTL_FACTOR)


def user_job_ids(client: redis.Redis, user_id: int) -> set[str]:
    return {decode_text(member) for member in cast(Iterable[bytes], client.smembers(user_jobs_key(user_id)))}


@dataclass
class Traces:
    """The Redis traces of some jobs: entry ids per stream, and the jobs whose hash is to go or to be closed."""

    job_ids: list[str] = field(default_factory=list)
    entries: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # stream -> (entry id, job id)
    finished: list[str] = field(default_factory=list)  # hash deleted
    in_flight: dict[str, str] = field(default_factory=dict)  # job id -> kind: hash replaced by a failed one

    @property
    def entry_count(self) -> int:
        return sum(len(ids) for ids in self.entries.values())


def find_traces(client: redis.Redis, job_ids: Sequence[str]) -> Traces:
    traces = Traces(job_ids=list(job_ids))
    wanted = {job_id.encode() for job_id in job_ids}
    windows: list[tuple[int, int]] = []
    now_ms = int(time.time() * 1000)
    with client.pipeline(transaction=False) as pipe:  # one round trip for a user's many jobs
        for job_id in job_ids:
            pipe.hgetall(job_key(job_id))
        hashes = cast(list[dict[bytes, bytes]], pipe.execute())
    for job_id, stored in zip(job_ids, hashes, strict=True):
        raw = decode_fields(stored)
        if not raw:
            continue  # expired: its live entries were trimmed long before (retention << job TTL)
        state = raw.get("state", "")
        if state in (JobState.DONE, JobState.FAILED) or "kind" not in raw:
            traces.finished.append(job_id)
        else:
            traces.in_flight[job_id] = raw["kind"]
        start = _ms(raw.get("created_at"), now_ms)
        end = now_ms if job_id in traces.in_flight else _ms(raw.get("finished_at"), now_ms)
        windows.append((start - CLOCK_SLACK_MS, max(start, end) + CLOCK_SLACK_MS))
    for stage in Stage:
        found = [
            entry for start, end in _merged(windows) for entry in _matching(client, stage.stream, wanted, start, end)
        ]
        if found:
            traces.entries[stage.stream] = found
        dead = _matching(client, stage.dead_letter_stream, wanted, None, None)
        if dead:
            traces.entries[stage.dead_letter_stream] = dead
    return traces


def delete_traces(
    client: redis.Redis, traces: Traces, *, owner: int, whole_user: bool, closing_code: ErrorCode, job_ttl_seconds: int
) -> set[str]:
    """Delete in one MULTI/EXEC, and take the jobs out of their owner's set (the whole set for a user). A job still
    in flight is closed as failed with ``closing_code`` and nothing else (no user id, photo key or box), so a client
    waiting on it learns why and its state stays terminal. Returns the jobs with an entry a worker holds (left)."""
    pipeline_streams = {stage.stream: stage for stage in PIPELINE}
    checked = [(stream, dict(entries)) for stream, entries in traces.entries.items() if stream in pipeline_streams]
    with client.pipeline(transaction=True) as pipe:
        for stream, jobs_of in checked:  # first, so that their answers lead the results
            stage = pipeline_streams[stream]
            pipe.eval(_DELETE_UNLESS_HELD, 2, stream, errors_key(stage), stage.group, *list(jobs_of))
        for stream, entries in traces.entries.items():
            if stream in pipeline_streams:
                continue
            ids = [entry_id for entry_id, _ in entries]
            pipe.xdel(stream, *ids)
            if not stream.endswith(":dead"):
                pipe.hdel(errors_key(_stage_of(stream)), *ids)
        for job_id in traces.finished:
            pipe.delete(job_key(job_id))
        for job_id, kind in traces.in_flight.items():
            key = job_key(job_id)
            pipe.delete(key)
            pipe.hset(
                key,
                mapping={
                    "kind": kind,
                    "state": JobState.FAILED.value,
                    "error_code": closing_code.value,
                    "error_message": f"the {'user' if whole_user else 'face'} was erased",
                    "finished_at": f"{time.time():.6f}",
                },
            )
            pipe.expire(key, job_ttl_seconds)
        if whole_user:
            pipe.delete(user_jobs_key(owner))
        elif traces.job_ids:
            pipe.srem(user_jobs_key(owner), *traces.job_ids)
        results = pipe.execute()
    held: set[str] = set()
    for (_, jobs_of), held_ids in zip(checked, results[: len(checked)], strict=True):
        held |= {jobs_of[decode_text(entry_id)] for entry_id in held_ids}
    for stream in traces.entries:
        if stream.endswith(":dead"):
            compact(client, stream)
    return held


def compact(client: redis.Redis, stream: str) -> None:
    """Rewrite a stream without consumer groups (a dead-letter stream) entry by entry, ids kept. XDEL only flags an
    entry deleted inside its listpack node: its bytes stay in memory, and in the RDB or AOF files written from it,
    until every entry of the node is gone. A live stream's nodes go with its trim; dead letters are never trimmed."""

    def rewrite(pipe: Pipeline) -> None:
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]], pipe.xrange(stream))  # read while watched
        pipe.multi()
        pipe.delete(stream)
        for entry_id, fields in rows:
            pipe.xadd(stream, cast(dict[FieldT, EncodableT], fields), id=entry_id)

    # Watched: a dead letter added meanwhile makes the rewrite start again instead of being lost.
    client.transaction(rewrite, stream, watch_delay=0.01)


def rewrite_append_only_file(client: redis.Redis) -> bool:
    """Start an AOF rewrite, so that the erased entries leave the file on disk too (XDEL and DEL only append to it).
    Returns whether one was started; managed Redis services may refuse the command, which is logged."""
    try:
        if not int(client.info("persistence").get("aof_enabled", 0)):
            return False
        client.bgrewriteaof()
    except redis.ResponseError as exc:
        # "already in progress": that rewrite may have forked before the deletions; the next one drops them.
        log.warning("erasure.aof_rewrite_refused", error=str(exc))
        return False
    return True


def _matching(
    client: redis.Redis, stream: str, wanted: set[bytes], start: int | None, end: int | None
) -> list[tuple[str, str]]:
    """(entry id, job id) of the entries of ``stream`` between the two millisecond times (None: the whole stream)
    whose job is wanted, read a page at a time."""
    found: list[tuple[str, str]] = []
    low = "-" if start is None else f"{max(start, 0)}-0"
    high = "+" if end is None else str(end)
    while True:
        rows = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(stream, min=low, max=high, count=PAGE))
        found += [
            (decode_text(entry_id), decode_text(fields[b"job_id"]))
            for entry_id, fields in rows
            if fields.get(b"job_id") in wanted
        ]
        if len(rows) < PAGE:
            return found
        low = "(" + decode_text(rows[-1][0])


def _merged(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _stage_of(stream: str) -> Stage:
    return next(stage for stage in Stage if stage.stream == stream)


def _ms(seconds: str | None, default: int) -> int:
    try:
        return int(float(seconds) * 1000) if seconds else default
    except ValueError:
        return default
