-- Admitting an event to its thread, atomically with the check that a run is going.
-- KEYS[1]: the thread's queue (list of event ids, in order of arrival at intake)
-- KEYS[2]: the thread's queued events (hash event id -> event JSON)
-- KEYS[3]: the event's run (hash): if it exists the event was admitted and started before
-- KEYS[4]: the threads index (sorted set), KEYS[5]: the busy threads (sorted set)
-- KEYS[6]: the queued events' publish times (sorted set event id -> publish time)
-- ARGV[1]: event id, ARGV[2]: event JSON, ARGV[3]: now, ARGV[4]: thread id,
-- ARGV[5]: when the event was published
-- The head (place 0) is the thread's run: a new event never goes before it. Among the
-- events waiting behind it, one published earlier goes before one published later,
-- whichever intake admitted first.
-- Returns the event's place in the queue: 0 means its run is the thread's to start now;
-- -1 when its run already exists (a redelivered or republished event).
if redis.call('EXISTS', KEYS[3]) == 1 then
  return -1
end
local at = redis.call('LPOS', KEYS[1], ARGV[1])
if not at then
  local published = tonumber(ARGV[5])
  local waiting = redis.call('LRANGE', KEYS[1], 1, -1)
  for i, other in ipairs(waiting) do
    local when = tonumber(redis.call('ZSCORE', KEYS[6], other) or '0')
    if when > published then
      redis.call('LINSERT', KEYS[1], 'BEFORE', other, ARGV[1])
      at = i
      break
    end
  end
  if not at then
    at = redis.call('RPUSH', KEYS[1], ARGV[1]) - 1
  end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[6], published, ARGV[1])
end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[4])
return at
