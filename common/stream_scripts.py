"""The runner's Lua scripts: each check and the writes that depend on it, run by Redis as one atomic step.

Registered with ``register_script``: they run by SHA, and redis-py loads them again when Redis answers NOSCRIPT
(after a restart). Field lists travel as ARGV (binary-safe), each section a count followed by its items.
"""

from __future__ import annotations

from common import status, transient

# ``owned``: the entry is still pending for this consumer with the delivery count it was handed out with. A
# claim by another consumer changes the owner; a claim that came back to this consumer changes the count.
_FENCE = """
local function owned(stream, group, consumer, id, deliveries)
  local row = redis.call('XPENDING', stream, group, id, id, 1)[1]
  return row ~= nil and row[2] == consumer and tonumber(row[4]) == tonumber(deliveries)
end
"""
_PREAMBLE = status.TRANSITION_LUA + _FENCE + transient.BLOB_LUA

# KEYS: stream, errors hash, job hash. ARGV: group, consumer, id, deliveries, ttl, rank, fields...
# 'lost': not ours; 'finished': the job is done or failed already, the entry is acked unrun; 'ok' (also for a job
# an erasure closed: its entry runs on to the index stage, which deletes the photo and crops the erasure left).
START = (
    _PREAMBLE
    + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 'lost' end
if job_rank(KEYS[3]) >= TERMINAL and not job_erased(KEYS[3]) then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3])
  return 'finished'
end
job_write(KEYS[3], tonumber(ARGV[6]), {unpack(ARGV, 7)}, ARGV[5])
return 'ok'
"""
)

# KEYS: stream, errors hash, job hash, next stream, dead-letter stream, webhook stream, the transient bytes' counter,
# then the transient blobs this write frees (all of the job's when it ends it), deleted with it.
# ARGV: group, consumer, id, deliveries, ttl, job id ('' for none), job-done channel, then five sections, each a
# count and that many items: the output's fields, the dead letter's fields, the stage-finished write (rank, then
# fields), the finishing write (rank, then fields), the webhook's fields. Returns {written, finished}: the
# PUBLISH and the webhook happen only when this write is what finished the job.
SETTLE = (
    _PREAMBLE
    + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return {0, 0} end
local at = 8
local function section()
  local n = tonumber(ARGV[at])
  local items = {}
  for k = 1, n do items[k] = ARGV[at + k] end
  at = at + n + 1
  return items
end
local forward, dead, note, final, webhook = section(), section(), section(), section(), section()
if #forward > 0 then redis.call('XADD', KEYS[4], '*', unpack(forward)) end
if #dead > 0 then redis.call('XADD', KEYS[5], '*', unpack(dead)) end
local finished = 0
if ARGV[6] ~= '' then
  if #note > 0 then job_write(KEYS[3], tonumber(note[1]), {unpack(note, 2)}, ARGV[5]) end
  if #final > 0 then finished = job_write(KEYS[3], tonumber(final[1]), {unpack(final, 2)}, ARGV[5]) end
  if finished == 1 then
    redis.call('PUBLISH', ARGV[7], ARGV[6])
    if #webhook > 0 then redis.call('XADD', KEYS[6], '*', unpack(webhook)) end
  end
end
for k = 8, #KEYS do blob_delete(KEYS[7], KEYS[k]) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[3])
return {1, finished}
"""
)

# KEYS: stream. ARGV: group, consumer, then id, deliveries pairs. Resets the idle time of the entries still ours
# (XCLAIM JUSTID counts no delivery), so nobody claims them while an outage is waited out; returns their ids.
KEEP = (
    _FENCE
    + """
local kept = {}
for k = 3, #ARGV, 2 do
  if owned(KEYS[1], ARGV[1], ARGV[2], ARGV[k], ARGV[k + 1]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[k], 'JUSTID')
    kept[#kept + 1] = ARGV[k]
  end
end
return kept
"""
)

# KEYS: stream, errors hash. ARGV: group, consumer, id, deliveries, error text.
NOTE_ERROR = (
    _FENCE
    + """
if not owned(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
return 1
"""
)
