-- The last step of a consumer's recovery: forget it, unless it beat again meanwhile.
-- A consumer recovered while it was only stalled re-registers (a heartbeat) before it
-- lands anything more; a recovery finishing after that beat must leave its
-- registration, or what it lands next would lie where no recovery looks.
-- KEYS[1]: the registry; KEYS[2]: the consumer's heartbeat; KEYS[3]: its held set;
-- KEYS[4]: its recovery claim
-- ARGV[1]: the consumer; ARGV[2]: '1' when the consumer closes itself
-- Returns 1 when forgotten, 0 when it is alive and stays registered.
redis.call('DEL', KEYS[4])
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
