-- Apply one commit's spilled writes to one slot of a Redis Cluster, once however
-- often it is asked (tether.store.spill).
-- KEYS[1]: the marker that these writes went in (in this slot)
-- KEYS[2 ..]: one key per write, in order
-- ARGV[1]: seconds the marker lives
-- then, per write: its command, N, and N arguments; an XADD's arguments are its
-- maxlen (0: uncapped) and its field/value pairs
-- Returns 1 when applied, 0 when they had been already.
local allowed = {
  XADD = true, ZADD = true, ZREM = true, HSET = true, HDEL = true, HINCRBY = true,
  EXPIRE = true, RPUSH = true, LREM = true, LTRIM = true, DEL = true, SADD = true,
}
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local at = 2
for k = 2, #KEYS do
  local command, nargs = ARGV[at], tonumber(ARGV[at + 1])
  if not allowed[command] then
    return redis.error_reply('spill.lua: write ' .. tostring(command) .. ' not allowed')
  end
  local call = {command, KEYS[k]}
  local first = at + 2
  if command == 'XADD' then
    local maxlen = tonumber(ARGV[first])
    if maxlen > 0 then
      call[#call + 1] = 'MAXLEN'
      call[#call + 1] = '~'
      call[#call + 1] = maxlen
    end
    call[#call + 1] = '*'
    first = first + 1
  end
  for i = first, at + 1 + nargs do
    call[#call + 1] = ARGV[i]
  end
  redis.call(unpack(call))
  at = at + 2 + nargs
end
return 1
