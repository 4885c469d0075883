-- An event intake rejected: no one waits for its number, and it leaves the thread's
-- queue, so that the hand-over starts the event behind it instead of publishing the
-- rejected one again (an agent removed or renamed while its event waited).
-- KEYS[1]: the thread's queue, KEYS[2]: its queued events, KEYS[3]: their publish
-- times, KEYS[4]: the thread's sequence hash, KEYS[5]: rejected sequence numbers
-- ARGV[1]: event id, ARGV[2]: its thread_seq ('' if none)
-- Returns 1 when the event left the queue, 0 when it was not on it, or was given the
-- thread by an admission (another delivery, on a worker that still knows its agent):
-- then its run goes on and its own end releases the thread.
local seq = tonumber(ARGV[2])
if seq then
  redis.call('ZADD', KEYS[5], seq, seq)
end
if redis.call('HGET', KEYS[4], 'running') == ARGV[1] then
  return 0
end
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return removed
