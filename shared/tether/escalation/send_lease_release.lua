-- Give a webhook send's lease back, if this sender still holds it (a delivered send
-- left "1" in its place, which stays).
-- KEYS[1]: the delivery marker; ARGV[1]: this sender's token
-- Returns 1 when released, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
