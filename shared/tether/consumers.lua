-- Claim the recovery of a consumer that looks dead, so one worker recovers it.
-- KEYS[1]: the consumer's heartbeat; KEYS[2]: its recovery claim
-- ARGV[1]: the claimant; ARGV[2]: seconds the claim lives (a claimant that dies
-- midway leaves the rest to the next one)
-- Returns 1 when the caller should recover it; 0 when it is alive or claimed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
return redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) and 1 or 0
