"""Job status hashes in Redis.

The API creates a job's hash (``queue_created``, on a pipeline, with the stream commands it belongs with). Every
later write goes through the job-state rules in ``TRANSITION_LUA``, which run inside Redis in the same script as
the stream commands of that write, so that a check and its write cannot be separated by another client:

* a job's state only moves forward: queued -> detecting -> aligning -> embedding -> indexing -> done | failed;
* done and failed are final: once a job has either, no stage write touches its hash again (``queue_reopened``,
  the operator's dead-letter replay, is the one way back);
* every write renews the hash's TTL, so a job whose hash expired while it ran does not come back without one.
"""

from __future__ import annotations

import json
import time
from typing import Any

from schemas.jobs import STAGE_STATE, ErrorCode, JobState, job_key
from schemas.results import FinishedResult
from schemas.streams import JobMessage, Stage

# Each state's place in a job's life; the finished states share the last one.
STATE_RANK: dict[JobState, int] = {
    JobState.QUEUED: 0,
    **{state: index + 1 for index, state in enumerate(STAGE_STATE.values())},
    JobState.DONE: len(STAGE_STATE) + 1,
    JobState.FAILED: len(STAGE_STATE) + 1,
}
TERMINAL_RANK = STATE_RANK[JobState.DONE]
ERROR_MESSAGE_CHARS = 1000
# The codes an erasure closes a job in flight with (common/db/job_traces.py). Such a job is final like any failed
# one, but an entry of it that a worker held at the erasure still runs through the stages: the erasure left the
# job's photo and crops for the index stage, which refuses the job and deletes them (its state stays as it is).
ERASURE_CODES = (ErrorCode.USER_NOT_FOUND, ErrorCode.FACE_ERASED)

_RANKS_LUA = ", ".join(f"[{json.dumps(state.value)}]={rank}" for state, rank in STATE_RANK.items())
_ERASURE_CODES_LUA = ", ".join(f"[{json.dumps(code.value)}]=true" for code in ERASURE_CODES)

# Lua shared by every script that writes a job hash. ``job_write(key, rank, fields, ttl)`` writes the flat
# field list and renews the TTL only when the job is not finished and ``rank`` is not behind its state; it
# returns 1 when it wrote. A state Redis holds that this code does not know counts as queued (it moves on);
# a key holding something other than a hash is never written (a job id cannot be used to clobber other data).
# A job whose hash is gone (erased with its person, or expired after FECAPASS_JOB_TTL_SECONDS) is never put back
# in flight: the API writes the hash in the same MULTI as the job's first entry, so a missing one is no job in
# flight. Only its final outcome may write it again (a replayed entry of an erased face ends `face_erased`, the
# hash then holding that outcome and its times, nothing about the person).
# ``job_erased(key)``: the job was closed by an erasure (see ``ERASURE_CODES``).
TRANSITION_LUA = f"""
local RANK = {{{_RANKS_LUA}}}
local ERASURE_CODES = {{{_ERASURE_CODES_LUA}}}
local TERMINAL = {TERMINAL_RANK}
local function job_rank(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return 0 end
  if kind ~= 'hash' then return -1 end
  local state = redis.call('HGET', key, 'state')
  if not state then return 0 end
  return RANK[state] or 0
end
local function job_erased(key)
  if job_rank(key) < TERMINAL or redis.call('HGET', key, 'state') ~= 'failed' then return false end
  return ERASURE_CODES[redis.call('HGET', key, 'error_code') or ''] == true
end
local function job_write(key, rank, fields, ttl)
  local current = job_rank(key)
  if current < 0 or current >= TERMINAL or rank < current then return 0 end
  if rank < TERMINAL and redis.call('EXISTS', key) == 0 then return 0 end
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
  redis.call('EXPIRE', key, ttl)
  return 1
end
"""


def now() -> str:
    return f"{time.time():.6f}"


def queue_job(pipe: Any, message: JobMessage, ttl_seconds: int) -> dict[str, str]:
    """Queue a new job: its status hash and its entry on the detect stream, on a MULTI ``pipe`` so that neither
    exists without the other. Returns what the hash will hold."""
    key = job_key(message.job_id)
    written = {"kind": message.kind.value, "image_key": message.image_key}
    if message.pack is not None:
        written["model_pack"] = message.pack
    if message.user_id is not None:
        written["user_id"] = str(message.user_id)
    # Which keys may read the job: those of its collection (a hash without it is from before collections: default).
    written["collection_id"] = str(message.collection_id)
    written.update(state=JobState.QUEUED.value, created_at=now())
    pipe.hset(key, mapping=written)
    pipe.expire(key, ttl_seconds)
    pipe.xadd(Stage.DETECT.stream, message.to_fields())
    return written


# What each write puts in the hash, as the flat lists ``job_write`` takes; the rank says where it belongs.


def stage_started(stage: Stage) -> tuple[int, list[str]]:
    state = STAGE_STATE[stage]
    return STATE_RANK[state], ["state", state.value, f"{stage.value}_started_at", now()]


def stage_finished(stage: Stage, extra: dict[str, str] | None = None) -> tuple[int, list[str]]:
    fields = {f"{stage.value}_finished_at": now(), **(extra or {})}
    return STATE_RANK[STAGE_STATE[stage]], [item for pair in fields.items() for item in pair]


def done(result: FinishedResult) -> tuple[int, list[str]]:
    """The result is stored as its model's JSON (``schemas.results.parse_stored_result`` reads it back)."""
    stored = result.stored.model_dump_json()
    return TERMINAL_RANK, ["state", JobState.DONE.value, "finished_at", now(), "result", stored]


def failed(code: ErrorCode | str, message: str) -> tuple[int, list[str]]:
    fields = ["state", JobState.FAILED.value, "finished_at", now(), "error_code", str(code)]
    return TERMINAL_RANK, [*fields, "error_message", message[:ERROR_MESSAGE_CHARS]]


_REOPEN_LUA = (
    TRANSITION_LUA
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if job_rank(KEYS[1]) < 0 or (state and state ~= 'failed') then return 0 end
redis.call('HDEL', KEYS[1], 'error_code', 'error_message', 'finished_at')
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
)


def queue_reopened(pipe: Any, job_id: str, stage: Stage, ttl_seconds: int) -> None:
    """Put a failed job back in flight at ``stage`` (an operator replaying its dead letter), the one write that
    leaves a final state. Any other job keeps its state: a done one stays done (the stage then acknowledges the
    replayed entry without running it), one in flight is not moved back."""
    _, fields = stage_started(stage)
    pipe.register_script(_REOPEN_LUA)(keys=[job_key(job_id)], args=[ttl_seconds, *fields], client=pipe)
