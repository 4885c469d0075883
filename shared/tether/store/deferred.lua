-- Taking due deferred messages to publish, and letting go of them once sent.
-- KEYS[1]: the deferred set (member -> when it is due, Redis's clock)
-- 'take': ARGV[2] now, ARGV[3] the claim (when a taker that died lets another send it),
--   ARGV[4] most entries. Each due entry is moved to the claim, so no other publisher
--   takes it meanwhile; returns the entries taken.
-- 'sent': ARGV[2] the entry, ARGV[3] its claim. It leaves the set only while it still
--   holds that claim: one deferred again meanwhile (its step, delivered, held back once
--   more) keeps its new time.
local op = ARGV[1]
if op == 'take' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
  for _, entry in ipairs(due) do
    redis.call('ZADD', KEYS[1], ARGV[3], entry)
  end
  return due
end
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if score and tonumber(score) == tonumber(ARGV[3]) then
  return redis.call('ZREM', KEYS[1], ARGV[2])
end
return 0
