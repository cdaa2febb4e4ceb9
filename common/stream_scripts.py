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

# One call for a whole batch (one round trip, however many entries were read).
# KEYS: stream, errors hash, then each entry's job hash. ARGV: group, consumer, ttl, rank, the count of the
# stage-started fields and those fields (the same for the batch), then each entry's id and deliveries.
# Returns one verdict per entry: 'lost': not ours; 'finished': the job is done or failed already, the entry is acked
# unrun; 'ok' (also for a job an erasure closed: its entry runs on to the index stage, which deletes the photo and
# crops the erasure left).
START = (
    _PREAMBLE
    + """
local stream, errors, group, consumer, ttl, rank = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local count = tonumber(ARGV[5])
local fields = {}
for k = 1, count do fields[k] = ARGV[5 + k] end
local at = 6 + count
local verdicts = {}
for k = 3, #KEYS do
  local id, deliveries = ARGV[at], ARGV[at + 1]
  at = at + 2
  if not owned(stream, group, consumer, id, deliveries) then
    verdicts[#verdicts + 1] = 'lost'
  elseif job_rank(KEYS[k]) >= TERMINAL and not job_erased(KEYS[k]) then
    redis.call('XACK', stream, group, id)
    redis.call('HDEL', errors, id)
    verdicts[#verdicts + 1] = 'finished'
  else
    job_write(KEYS[k], rank, fields, ttl)
    verdicts[#verdicts + 1] = 'ok'
  end
end
return verdicts
"""
)

# Settles every entry of a batch in one call, each one as its own fenced write (an entry no longer ours writes
# nothing; the others still do).
# KEYS: stream, errors hash, next stream, dead-letter stream, webhook stream, the transient bytes' counter, then per
# write its job hash (the stream when it has no job) followed by the transient blobs the write frees (all of the
# job's when it ends it), deleted with it.
# ARGV: group, consumer, ttl, job-done channel, read-ahead count, the stage-started rank (0: a stage without job
# states), the job hashes' key prefix, the count of the stage-started fields and those fields, then per write: id,
# deliveries, job id ('' for none), how many blobs it frees, then five sections, each a count and that many items: the
# output's fields, the dead letter's fields, the stage-finished write (rank, then fields), the finishing write (rank,
# then fields), the webhook's fields. The PUBLISH and the webhook happen only when a write is what finished its job.
# Returns {{written, finished} per write, flat; the entries read ahead; a verdict per entry read ahead}: with a
# read-ahead count, the script also reads the next entries waiting for the group (XREADGROUP '>' without BLOCK, as
# {id, {field, value, ...}} each) and does START's write for each (it has just been read: it is ours): 'ok'; an
# entry that names no job, or a finished one, is 'unstarted', left to START (which acks it unrun, or dead-letters
# it when it is malformed). A stage with work queued thus reads and starts its next batch in the round trip that
# settles the last one.
SETTLE = (
    _PREAMBLE
    + """
local stream, errors, next_stream, dead_stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local webhook_stream, counter = KEYS[5], KEYS[6]
local group, consumer, ttl, channel, read_ahead = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local start_rank, job_prefix, start_count = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local start_fields = {}
for k = 1, start_count do start_fields[k] = ARGV[8 + k] end
local at, key_at = 9 + start_count, 7
local function section()
  local n = tonumber(ARGV[at])
  local items = {}
  for k = 1, n do items[k] = ARGV[at + k] end
  at = at + n + 1
  return items
end
local results = {}
while at <= #ARGV do
  local id, deliveries, job_id, freeing = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
  at = at + 4
  local forward, dead, note, final, webhook = section(), section(), section(), section(), section()
  local job = KEYS[key_at]
  local first_freed, last_freed = key_at + 1, key_at + freeing
  key_at = key_at + freeing + 1
  if not owned(stream, group, consumer, id, deliveries) then
    results[#results + 1] = 0
    results[#results + 1] = 0
  else
    if #forward > 0 then redis.call('XADD', next_stream, '*', unpack(forward)) end
    if #dead > 0 then redis.call('XADD', dead_stream, '*', unpack(dead)) end
    local finished = 0
    if job_id ~= '' then
      if #note > 0 then job_write(job, tonumber(note[1]), {unpack(note, 2)}, ttl) end
      if #final > 0 then finished = job_write(job, tonumber(final[1]), {unpack(final, 2)}, ttl) end
      if finished == 1 then
        redis.call('PUBLISH', channel, job_id)
        if #webhook > 0 then redis.call('XADD', webhook_stream, '*', unpack(webhook)) end
      end
    end
    for k = first_freed, last_freed do blob_delete(counter, KEYS[k]) end
    redis.call('XACK', stream, group, id)
    redis.call('HDEL', errors, id)
    results[#results + 1] = 1
    results[#results + 1] = finished
  end
end
local next_entries, verdicts = {}, {}
if read_ahead > 0 then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', read_ahead, 'STREAMS', stream, '>')
  if read then next_entries = read[1][2] end
  for i, entry in ipairs(next_entries) do
    local fields, job_id = entry[2], nil
    for k = 1, #fields, 2 do
      if fields[k] == 'job_id' then job_id = fields[k + 1] end  -- the last one, as the runner's parse reads it
    end
    verdicts[i] = 'unstarted'
    if start_rank > 0 and job_id then
      local job = job_prefix .. job_id
      if job_rank(job) < TERMINAL or job_erased(job) then
        job_write(job, start_rank, start_fields, ttl)
        verdicts[i] = 'ok'
      end
    end
  end
end
return {results, next_entries, verdicts}
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
