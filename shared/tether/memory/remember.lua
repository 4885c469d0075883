-- One write to long-term memory, its limits checked, and its event log entry, together.
-- KEYS[1]: the memory hash (key -> item JSON)
-- On one Redis (ARGV[8] 'here'): KEYS[2]: the agents set, KEYS[3]: the run's event log,
-- KEYS[4]: the lifecycle stream; ARGV[9]: the log entry JSON, ARGV[10..]: lifecycle
-- field/value pairs.
-- On a Redis Cluster (ARGV[8] 'spill'): KEYS[2]: the memory's spill list
-- (tether.store.spill), where ARGV[9], the entry holding those three writes, goes instead.
-- ARGV[1]: the item's key, ARGV[2]: the item JSON, ARGV[3]: the action id writing it,
-- ARGV[4]: max items, ARGV[5]: max bytes (sum of item JSON), ARGV[6]: TTL in seconds,
-- ARGV[7]: the agent
-- Returns {1} written, {0} this action wrote it already (a redelivery: nothing twice),
-- {-1, why} refused for a limit, and then nothing was written. On a cluster, {1} and
-- {0} carry the spill list's entries after it, for the caller to apply.
local spilled = ARGV[8] == 'spill'
local function done(code)
  local reply = {code}
  if spilled then
    for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
      reply[#reply + 1] = entry
    end
  end
  return reply
end
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
  local ok, item = pcall(cjson.decode, existing)
  if ok and item['action_id'] == ARGV[3] then
    return done(0)
  end
end
local count = redis.call('HLEN', KEYS[1])
if not existing and count >= tonumber(ARGV[4]) then
  return {-1, 'items'}
end
local total = 0
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  total = total + string.len(value)
end
if existing then
  total = total - string.len(existing)
end
if total + string.len(ARGV[2]) > tonumber(ARGV[5]) then
  return {-1, 'bytes'}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
if spilled then
  redis.call('RPUSH', KEYS[2], ARGV[9])
  return done(1)
end
redis.call('SADD', KEYS[2], ARGV[7])
redis.call('XADD', KEYS[3], '*', 'event', ARGV[9])
local entry = {'XADD', KEYS[4], 'MAXLEN', '~', 100000, '*'}
for i = 10, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
redis.call(unpack(entry))
return done(1)
