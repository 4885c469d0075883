-- A thread's queued copy of an event replaced by the one its input guardrails left,
-- only where it is still the copy that was read: one that left the queue meanwhile
-- (its run ended) stays gone, and one changed meanwhile is read again.
-- KEYS[1]: the thread's events hash. ARGV: event id, the copy read, its replacement.
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
