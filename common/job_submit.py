"""Queueing a job in one Redis round trip: one MULTI stores the job's transient photos (plain SETs, before the
submit script), and the script checks the idempotency claim and the transient byte cap, then counts
the photos and writes the job's status hash, its event on the detect stream, its owner and the idempotency record.
A put script and then a MULTI cost two round trips (two more with the WATCH and GET of a claim), and a claim taken
over in between was found only by the EXEC failing; in one MULTI the checks and the writes are one atomic step.

The photos are SET before the script runs, not passed to it: a script's ARGV copies every byte on its way to the SET
(340 us of Redis for a search photo's submit, BENCHMARKS.md), a SET in a MULTI only stores it. No client sees them
uncounted (a MULTI runs whole), and no event ever points at nothing (they are stored before it is written).
A refused claim or cap deletes the photos in the same step and writes nothing: afterwards nothing is stored.

The writes are those the helpers of common/status.py and common/db/job_traces.py make on a MULTI pipe: they are
recorded on a ``Writes`` instead (the same calls), so the hash and the entry keep one home.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from common import transient

EncodableArg = str | bytes | int


class Queued(enum.Enum):
    QUEUED = "queued"
    CAP_FULL = "full"  # the photos would take the bytes held past the cap: nothing stored, nothing queued
    CLAIM_LOST = "lost"  # the idempotency key is no longer this request's: nothing stored, nothing queued


@dataclass
class Writes:
    """Redis writes recorded instead of sent, for ``JobSubmitter.queue`` to make after its checks: a stand-in for
    the MULTI pipe that ``status.queue_job`` and ``queue_job_owner`` take (the commands they call, with redis-py's
    names and arguments)."""

    keys: list[str] = field(default_factory=list)
    commands: list[tuple[str, int, list[EncodableArg]]] = field(default_factory=list)  # name, key's index, args

    def _add(self, name: str, key: str, args: Sequence[EncodableArg]) -> None:
        if key not in self.keys:
            self.keys.append(key)
        self.commands.append((name, self.keys.index(key), list(args)))

    def hset(self, name: str, mapping: Mapping[str, EncodableArg]) -> None:
        self._add("HSET", name, [item for pair in mapping.items() for item in pair])

    def expire(self, name: str, time: int) -> None:
        self._add("EXPIRE", name, [int(time)])

    def xadd(self, name: str, fields: Mapping[str, EncodableArg]) -> None:
        self._add("XADD", name, ["*", *(item for pair in fields.items() for item in pair)])

    def sadd(self, name: str, *values: EncodableArg) -> None:
        self._add("SADD", name, list(values))

    def set(self, name: str, value: EncodableArg, ex: int) -> None:
        self._add("SET", name, [value, "EX", int(ex)])


# KEYS: the transient bytes' counter, the idempotency key (unread when ARGV[3] is ''), the blob keys (just SET, not
# yet counted), then the keys of the writes. ARGV: blob ttl ms, cap (0: none), the claim's pending record ('' for none),
# the number of blobs, then each write: its command, its key's place among the writes' keys, a count, its arguments.
SUBMIT = (
    transient.BLOB_LUA
    + """
local ttl, cap, pending, blobs = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
-- Counted first, so that whatever fails after this line leaves them counted, as the API's cleanup then uncounts them.
for i = 1, blobs do blob_count(KEYS[1], KEYS[2 + i], ttl) end
local function refuse(answer)
  for i = 1, blobs do blob_delete(KEYS[1], KEYS[2 + i]) end
  return answer
end
if pending ~= '' then
  local record = redis.call('GET', KEYS[2])
  if record ~= false and record ~= pending then return refuse('lost') end
end
if cap > 0 and blobs > 0 and blob_held(KEYS[1]) > cap then return refuse('full') end
local first = 3 + blobs  -- KEYS[first + i]: the write key at place i (0-based)
local at = 5
while at <= #ARGV do
  local command, key, count = ARGV[at], KEYS[first + tonumber(ARGV[at + 1])], tonumber(ARGV[at + 2])
  redis.call(command, key, unpack(ARGV, at + 3, at + 2 + count))
  at = at + 3 + count
end
return 'queued'
"""
)


@dataclass(frozen=True)
class ClaimCheck:
    """The idempotency record a request holds (ingest_api/idempotency.py): the script queues the job only while
    the key still holds it, or nothing (a pending record that expired, which no other request took)."""

    redis_key: str
    pending: bytes


class JobSubmitter:
    """The API's submit: one MULTI of plain SETs and the submit script (an asyncio client)."""

    def __init__(self, client: aioredis.Redis, ttl_seconds: int, max_bytes: int) -> None:
        self.client = client
        self.ttl_ms = ttl_seconds * 1000
        self.max_bytes = max_bytes

    async def queue(
        self, blobs: Sequence[tuple[str, bytes]], writes: Writes, claim: ClaimCheck | None = None
    ) -> Queued:
        """Store ``blobs`` (counted against the cap) and make ``writes``; or, refused, nothing. The script goes as
        EVAL, not EVALSHA: inside a MULTI a NOSCRIPT (after a Redis restart) would fail the checks and still run the
        SETs, as in ``TransientStore.put_many``."""
        claim_key = claim.redis_key if claim is not None else ""
        keys = [transient.BYTES_KEY, claim_key, *(key for key, _ in blobs), *writes.keys]
        args: list[EncodableArg] = [self.ttl_ms, self.max_bytes, claim.pending if claim is not None else "", len(blobs)]
        for name, index, command_args in writes.commands:
            args += [name, index, len(command_args), *command_args]
        pipe = self.client.pipeline(transaction=True)
        # No uncount before the SETs, unlike a stage's put: a blob's name holds a new job's id, so nothing is there.
        for key, data in blobs:
            pipe.set(key, data, px=self.ttl_ms)
        pipe.eval(SUBMIT, len(keys), *keys, *args)
        answer = (await pipe.execute())[-1]
        return Queued(answer.decode() if isinstance(answer, bytes) else str(answer))
