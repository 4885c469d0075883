-- Renew a webhook send's lease while this sender still holds it.
-- KEYS[1]: the delivery marker; ARGV[1]: this sender's token; ARGV[2]: the lease in ms
-- Returns 1 when renewed, 0 when the lease is no longer this sender's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
