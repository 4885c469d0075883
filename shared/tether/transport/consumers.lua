-- Find the consumers that are dead, and claim their recovery, so one worker recovers each.
-- Liveness is judged in Redis time, and only over time Redis was watched: a heartbeat
-- key also lapses while Redis itself is away (stopped, restarted, cut off), though its
-- consumer is alive. So every sweep notes when it ran; after a gap of more than
-- ARGV[3] seconds with no sweep the watch starts again, and no consumer is judged until
-- the consumers have had ARGV[2] seconds of Redis to beat in.
-- KEYS[1]: the sweep clock (a hash: swept, watching_since);
-- KEYS[2..]: per consumer, its heartbeat key then its recovery claim key
-- ARGV[1]: the claimant; ARGV[2]: seconds without a heartbeat that make a consumer dead
-- (also how long a claim lives: a claimant that dies midway leaves the rest to the
-- next one); ARGV[3]: the longest gap between sweeps that keeps the watch going
-- Returns the 1-based numbers of the consumers (pairs of keys) this caller must recover.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local dead_after = tonumber(ARGV[2])
local clock = redis.call('HMGET', KEYS[1], 'swept', 'watching_since')
local swept, since = tonumber(clock[1]), tonumber(clock[2])
if swept == nil or since == nil then
  -- Never swept: no heartbeat lapsed unwatched (a Redis that lost this key lost the
  -- heartbeats and the registry with it), so the watch counts as long enough.
  since = now - dead_after
elseif now - swept > tonumber(ARGV[3]) or now < swept then
  since = now  -- Redis (or every sweeper) was away, or its clock went back: watch anew
end
redis.call('HSET', KEYS[1], 'swept', tostring(now), 'watching_since', tostring(since))
if now - since < dead_after then
  return {}
end
local claimed = {}
for i = 2, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 0
    and redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    claimed[#claimed + 1] = i / 2
  end
end
return claimed
