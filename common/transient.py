"""Transient bytes: the photo of a search, verify or detect job, every face's region of its photo on its way from the
detect stage to the align stage (raw pixels: the align stage decodes no photo) and every crop on its way to the
embed stage (raw pixels too, common/job_bytes.py), held
in Redis under ``fecapass:blob:<job>:<name>`` with a TTL, where an S3 put, get and delete would cost an HTTP request
each and the S3 server's CPU. Enrolled photos and their crops stay in S3 (a face row points at them); so does the
photo a reindex reads (the enrolled one).

The bytes live in their own string keys, never in a stream entry (entries stay flat readable text). A job's blobs
are deleted by the write that ends the job (common/runner.py: the final write, a failure or a dead letter, in the
same script), its photos already with the detect stage's forward write (the regions hold all the align stage reads)
and its regions when the align stage has cut the crops; the TTL bounds whatever a crash or an
unreadable dead letter leaves. A stage that finds a blob gone (expired while its message waited) fails the job with
``photo_expired`` at once: Redis is the only copy, so waiting cannot bring it back.

How many bytes Redis holds is counted for the API's backpressure (FECAPASS_TRANSIENT_MAX_BYTES), by the same
script as each SET and DEL, so that no crash separates a write from its count. The count is kept per window of
expiry time (a hash ``fecapass:blob-bytes``: field = the blob's expiry // 60 s, value = bytes): a blob that expires
instead of being deleted leaves its bytes in its window's field, and the field is dropped once its window has
passed, so a count left behind heals by itself within a minute of the bytes it counted, with no scan of the keys.
A blob's window is read back from its own expiry (PEXPIRETIME, Redis 7 / Valkey 7.2+), so the DEL finds the field the
SET counted in. Redis must run with ``maxmemory-policy noeviction``: an evicted blob would stay counted until its
window passes, and worse, a job would lose its photo.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis
import redis.asyncio as aioredis

from common.errors import JobFailed
from common.settings import StreamSettings
from schemas.jobs import ErrorCode
from schemas.streams import PIPELINE, JobKind, JobMessage, StreamMessage

BLOB_PREFIX = "fecapass:blob:"
BYTES_KEY = "fecapass:blob-bytes"
WINDOW_MS = 60_000
# The kinds whose photos the API keeps in Redis. A reindex's photo is the enrolled one, in S3; its crop is transient.
TRANSIENT_PHOTO_KINDS = (JobKind.SEARCH, JobKind.VERIFY, JobKind.DETECT)
# Most photos one job has (verify: two), and most crops a job of a user has (enroll and verify keep the largest face
# of each photo): what an erasure deletes for a job whose message it does not read.
PHOTOS_PER_JOB = 2


class PhotoExpired(JobFailed):
    """A transient blob is gone: its TTL ran out while the message waited (or Redis lost it)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            ErrorCode.PHOTO_EXPIRED,
            f"{key} expired before the job reached it (FECAPASS_TRANSIENT_TTL_SECONDS); submit the photo again",
        )


def blob_key(job_id: str, name: str) -> str:
    return f"{BLOB_PREFIX}{job_id}:{name}"


def is_transient(key: str) -> bool:
    return key.startswith(BLOB_PREFIX)


def photo_blob_key(job_id: str, source: int = 0) -> str:
    return blob_key(job_id, "photo" if source == 0 else f"photo.{source}")


def crop_blob_key(job_id: str, face_index: int) -> str:
    return blob_key(job_id, f"crop.{face_index}")


def region_blob_key(job_id: str, face_index: int) -> str:
    return blob_key(job_id, f"region.{face_index}")


def job_blob_keys(job_id: str, crops: int) -> list[str]:
    """Every blob a job can have: its photos and, for ``crops`` faces, their regions and crops (deleting one that was
    never written costs nothing)."""
    faces = range(crops)
    return (
        [photo_blob_key(job_id, s) for s in range(PHOTOS_PER_JOB)]
        + [region_blob_key(job_id, i) for i in faces]
        + [crop_blob_key(job_id, i) for i in faces]
    )


def message_blob_keys(job_id: str, message: StreamMessage | None) -> list[str]:
    """The blobs of the job an entry belongs to, as far as the entry tells (regions and crops: one per face it
    carries)."""
    faces = getattr(message, "faces", None) if isinstance(message, JobMessage) else None
    return job_blob_keys(job_id, len(faces) if faces else 0)


def minimum_ttl_seconds(streams: StreamSettings) -> float:
    """How long a message can wait in the streams before it is dead-lettered, delivery after delivery, in every stage:
    a TTL shorter than this lets a slow but healthy job lose its photo (it then fails ``photo_expired``)."""
    return len(PIPELINE) * streams.max_deliveries * streams.claim_idle_ms / 1000


# Shared by every script that writes or deletes a blob: KEYS hold the counter hash first, then blob keys.
BLOB_LUA = f"""
local WINDOW_MS = {WINDOW_MS}
local function blob_window(key)
  local at = redis.call('PEXPIRETIME', key)
  if at < 0 then return nil end
  return tostring(math.floor(at / WINDOW_MS))
end
local function blob_delete(counter, key)
  -- Only a string is a blob: whatever else sits under the name is left alone (and a settle never fails on it).
  if redis.call('TYPE', key)['ok'] ~= 'string' then return 0 end
  local window = blob_window(key)
  local size = redis.call('STRLEN', key)
  redis.call('DEL', key)
  if window ~= nil and redis.call('HINCRBY', counter, window, -size) <= 0 then redis.call('HDEL', counter, window) end
  return size
end
local function blob_held(counter)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local fields = redis.call('HGETALL', counter)
  local total = 0
  for i = 1, #fields, 2 do
    if (tonumber(fields[i]) + 1) * WINDOW_MS <= now then
      redis.call('HDEL', counter, fields[i])
    else
      total = total + tonumber(fields[i + 1])
    end
  end
  return total
end
local function blob_count(counter, key, ttl_ms)
  -- The bytes a blob just stored under ``key`` holds, counted in its expiry's window.
  redis.call('HINCRBY', counter, blob_window(key), redis.call('STRLEN', key))
  if redis.call('PTTL', counter) < ttl_ms + 2 * WINDOW_MS then
    redis.call('PEXPIRE', counter, ttl_ms + 2 * WINDOW_MS)
  end
end
"""

# A stage's blobs, written by plain SETs between these two in one MULTI (TransientStore.put_many): the bytes travel
# once, where a script's ARGV copies and hashes each of them on its way to the SET (a put script cost a stage 206 us
# a call for a photo's regions, BENCHMARKS.md). KEYS: counter, blob keys; UNCOUNT deletes what they held, COUNT
# (ARGV: ttl ms) counts what they hold now.
UNCOUNT = BLOB_LUA + "\nfor i = 2, #KEYS do blob_delete(KEYS[1], KEYS[i]) end\nreturn 1\n"
COUNT = (
    BLOB_LUA
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do blob_count(KEYS[1], KEYS[i], ttl) end
return 1
"""
)

# KEYS: counter, blob keys. Returns the bytes freed.
DELETE = (
    BLOB_LUA
    + """
local freed = 0
for i = 2, #KEYS do freed = freed + blob_delete(KEYS[1], KEYS[i]) end
return freed
"""
)

# KEYS: counter. The bytes held by blobs whose window has not passed.
HELD = BLOB_LUA + "\nreturn blob_held(KEYS[1])\n"


def delete_blobs(client: redis.Redis, keys: Sequence[str]) -> int:
    """Delete blobs (and their count) outside a stage: an erasure, a test; returns the bytes freed."""
    return int(client.register_script(DELETE)(keys=[BYTES_KEY, *keys])) if keys else 0


def held_bytes(client: redis.Redis) -> int:
    """The bytes the blobs hold, as the cap counts them (the metrics collector, operators)."""
    return int(client.register_script(HELD)(keys=[BYTES_KEY]))


class TransientStore:
    """The blobs, for the stages (a blocking client)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.client = client
        self.ttl_ms = ttl_seconds * 1000
        self._delete = client.register_script(DELETE)
        self._held = client.register_script(HELD)

    def put(self, key: str, data: bytes) -> None:
        """Store a blob, counted but never refused: a stage must finish the jobs the API admitted."""
        self.put_many([key], [data])

    def put_many(self, keys: Sequence[str], values: Sequence[bytes]) -> None:
        """Store blobs in one round trip, counted but never refused: one MULTI, so that no client sees a blob
        uncounted. The scripts go as EVAL, not EVALSHA: inside a MULTI a NOSCRIPT (after a Redis restart) would
        fail the count and still run the SETs."""
        if not keys:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.eval(UNCOUNT, 1 + len(keys), BYTES_KEY, *keys)
        for key, value in zip(keys, values, strict=True):
            pipe.set(key, value, px=self.ttl_ms)
        pipe.eval(COUNT, 1 + len(keys), BYTES_KEY, *keys, self.ttl_ms)
        pipe.execute()

    def get(self, key: str) -> bytes:
        data = self.client.get(key)
        if data is None:
            raise PhotoExpired(key)
        return cast(bytes, data)

    def get_present(self, keys: Sequence[str]) -> list[bytes | None]:
        """One MGET for all of them; None for each one gone."""
        return cast(list[bytes | None], self.client.mget(keys)) if keys else []

    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """One MGET for all of them; the first one gone fails."""
        found = self.get_present(keys)
        for key, data in zip(keys, found, strict=True):
            if data is None:
                raise PhotoExpired(key)
        return cast(list[bytes], found)

    def delete(self, keys: Sequence[str]) -> int:
        return int(self._delete(keys=[BYTES_KEY, *keys])) if keys else 0

    def held_bytes(self) -> int:
        return int(self._held(keys=[BYTES_KEY]))


class AsyncTransientStore:
    """The blobs, for the API: stored (under the cap) by the submit script with their job (common/job_submit.py),
    deleted here when a submit fails after sending them."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._delete = client.register_script(DELETE)

    async def delete(self, keys: Sequence[str]) -> int:
        return int(await self._delete(keys=[BYTES_KEY, *keys])) if keys else 0
