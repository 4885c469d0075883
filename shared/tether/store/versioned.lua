-- Compare-and-set of a versioned document stored as a hash {doc, version, ...},
-- with everything that describes the change written in the same step: stream
-- entries (the event log), index updates, expiries.
-- KEYS[1]: the document's hash
-- KEYS[2 .. 1+E]: keys to EXPIRE after ARGV[3] seconds once the write succeeds
-- KEYS[2+E .. 1+E+R]: sets that must hold a member for the write to go ahead
-- KEYS[2+E+R .. 1+E+R+A]: one stream per append, in order
-- then one key per side write, in order
-- then one list per tail (see ARGV[#ARGV - 1])
-- then, if ARGV[#ARGV] is 1, the spill list (tether.store.spill): a winner gets its entries back
-- ARGV[1]: the version the writer read (0 when it expects no document yet)
-- ARGV[2]: the new document
-- ARGV[3]: seconds for the expiry (ignored when E is 0)
-- ARGV[4]: F, the number of field/value pairs stored beside the document (e.g. status)
-- ARGV[5]: E, the number of keys to expire
-- ARGV[6]: R, the number of required set members
-- ARGV[7]: A, the number of appends
-- ARGV[8]: H, the number of keys that must hold an exact string
-- ARGV[9 .. 8+2F]: the field/value pairs
-- ARGV[9+2F .. 8+2F+R]: the member each required set must hold
-- ARGV[9+2F+R .. 8+2F+R+2H]: H key/string pairs: the write goes ahead only while each key
-- holds exactly that string. The keys are arguments, not KEYS, because a script's KEYS
-- need write rights (EVALSHA's key spec) and a writer may only read these (the planner,
-- an action's result: users.acl); each shares the document's slot, as a cluster asks.
-- then, per append: maxlen (0: uncapped), P, and P field/value pairs
-- then, per side write: its command (ZADD, ZREM, HSET, HDEL, HINCRBY, EXPIRE, and for
-- thread queues, histories and a run's appended lists RPUSH, LREM, LTRIM, DEL, and for
-- the messages a commit publishes LPUSH), N, and N arguments
-- then, per publish, its channel and message (a task event of a message the commit
-- publishes: channels are no keys, so they are arguments)
-- then, per tail, the index its entries are wanted from
-- ARGV[#ARGV - 2]: P, the number of publishes
-- ARGV[#ARGV - 1]: T, the lists (the T KEYS before the spill list) whose newer entries a
-- loser gets back
-- ARGV[#ARGV]: S, 1 when the last key is a spill list, else 0
-- Returns {new_version, spill entries...}; {-1, current_version, current_doc, generation, tail_1, ...,
-- tail_T} when another writer committed first, so the loser can decide again without
-- another read: each tail holds its list's entries from the index asked, and
-- generation (the hash's field, 0 if none) tells whether any list was written anew;
-- {-2, member} when a required member is missing (a budget reservation that
-- was refused in the same pipeline), and nothing is written;
-- {-3, i, found} when the i-th of the H keys (from 1) holds another string than the one
-- asked, found (nil when the key is missing), and nothing is written.
local allowed = {
  ZADD = true, ZREM = true, HSET = true, HDEL = true, HINCRBY = true, EXPIRE = true,
  RPUSH = true, LREM = true, LTRIM = true, DEL = true, LPUSH = true,
}
local nspill = tonumber(ARGV[#ARGV])
local ntails = tonumber(ARGV[#ARGV - 1])
local npublish = tonumber(ARGV[#ARGV - 2])
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  local found = redis.call('HMGET', KEYS[1], 'doc', 'generation')
  local lost = {-1, current, found[1], found[2] or '0'}
  for i = 1, ntails do
    lost[#lost + 1] = redis.call(
      'LRANGE', KEYS[#KEYS - nspill - ntails + i], ARGV[#ARGV - 3 - ntails + i], -1)
  end
  return lost
end
local nfields, nexpire, nrequire = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local nappends, nhold = tonumber(ARGV[7]), tonumber(ARGV[8])
local members = 9 + 2 * nfields
for i = 0, nrequire - 1 do
  if redis.call('SISMEMBER', KEYS[2 + nexpire + i], ARGV[members + i]) == 0 then
    return {-2, ARGV[members + i]}
  end
end
local held = members + nrequire
for i = 0, nhold - 1 do
  local found = redis.call('GET', ARGV[held + 2 * i])
  if found ~= ARGV[held + 2 * i + 1] then
    return {-3, i + 1, found}
  end
end
local write = {'HSET', KEYS[1], 'doc', ARGV[2], 'version', current + 1}
for i = 9, 8 + 2 * nfields do
  write[#write + 1] = ARGV[i]
end
redis.call(unpack(write))
for i = 2, 1 + nexpire do
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3]))
end
local at = held + 2 * nhold
local k = 2 + nexpire + nrequire
for _ = 1, nappends do
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
  k = k + 1
end
while k <= #KEYS - ntails - nspill do
  local command, nargs = ARGV[at], tonumber(ARGV[at + 1])
  if not allowed[command] then
    return redis.error_reply('versioned.lua: side write ' .. tostring(command) .. ' not allowed')
  end
  local call = {command, KEYS[k]}
  for i = at + 2, at + 1 + nargs do
    call[#call + 1] = ARGV[i]
  end
  redis.call(unpack(call))
  at = at + 2 + nargs
  k = k + 1
end
for _ = 1, npublish do
  redis.call('PUBLISH', ARGV[at], ARGV[at + 1])
  at = at + 2
end
local won = {current + 1}
if nspill == 1 then
  for _, entry in ipairs(redis.call('LRANGE', KEYS[#KEYS], 0, -1)) do
    won[#won + 1] = entry
  end
end
return won
