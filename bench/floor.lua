-- The least a step's commit does in Redis under DESIGN.md's invariants, as one script:
-- a fenced compare-and-set of the run's document, each log entry in the run's stream
-- and its line in the lifecycle stream, the conversation's new message appended, and
-- the budget's counters moved once per reservation marker.
-- KEYS[1]: the run's hash; KEYS[2]: its log stream; KEYS[3]: the lifecycle stream;
-- KEYS[4]: its messages list; KEYS[5]: its budget hash; KEYS[6]: its reservation markers
-- ARGV[1]: the version read; ARGV[2]: the new document; ARGV[3]: the message appended;
-- ARGV[4]: the reservation marker; ARGV[5]: the step; ARGV[6..]: log entries (JSON)
-- Returns the new version, or -1 when another writer committed first (nothing written).
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return -1
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'version', current + 1)
for i = 6, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'event', ARGV[i])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'run_id', KEYS[1], 'kind', 'entry',
    'step', ARGV[5])
end
redis.call('RPUSH', KEYS[4], ARGV[3])
if redis.call('SADD', KEYS[6], ARGV[4]) == 1 then
  local used = redis.call('HMGET', KEYS[5], 'max_steps', 'steps', 'max_tokens', 'tokens')
  redis.call('HSET', KEYS[5], 'steps', (tonumber(used[2]) or 0) + 1,
    'tokens', (tonumber(used[4]) or 0) + 1000)
end
return current + 1
