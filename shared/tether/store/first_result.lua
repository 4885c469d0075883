-- The first result stored under an action's id, and only with it the log entries
-- that describe it: a result that comes second writes nothing.
-- KEYS[1]: the action's result
-- KEYS[2 .. #KEYS]: one stream per append, in order
-- ARGV[1]: the result; ARGV[2]: its expiry in seconds
-- then, per append: maxlen (0: uncapped), P, and P field/value pairs
-- Returns nil when this result was stored, else the result stored before it.
-- One command decides (Redis 7's SET NX GET): the earlier result, or nothing and set.
local earlier = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'EX', ARGV[2])
if earlier then
  return earlier
end
local at = 3
for k = 2, #KEYS do
  local maxlen, npairs = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
  local entry = {'XADD', KEYS[k]}
  if maxlen > 0 then
    entry[#entry + 1] = 'MAXLEN'
    entry[#entry + 1] = '~'
    entry[#entry + 1] = maxlen
  end
  entry[#entry + 1] = '*'
  for i = at + 2, at + 1 + 2 * npairs do
    entry[#entry + 1] = ARGV[i]
  end
  redis.call(unpack(entry))
  at = at + 2 + 2 * npairs
end
return false
