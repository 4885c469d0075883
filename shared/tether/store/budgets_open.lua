-- Open a run's budget once: a redelivered start finds its clock set and changes nothing,
-- so the first clock and limits stay, and a budget opened before markers moved into the
-- hash gets no 'markers' field (budgets.lua would then look for its markers there).
-- KEYS[1]: the run's budget hash; ARGV[1]: started_at; ARGV[2..]: field, value, ...
if redis.call('HSETNX', KEYS[1], 'started_at', ARGV[1]) == 0 then
  return 0
end
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
end
return 1
