-- A busy thread with nothing queued is idle: it leaves the busy index.
-- KEYS[1]: the thread's queue, KEYS[2]: the busy threads; ARGV[1]: the thread id
-- Returns 1 when it left, 0 when something is queued (a stalled hand-over).
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
