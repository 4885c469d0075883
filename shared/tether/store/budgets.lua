-- Atomic budget reservation and settlement for one run.
-- KEYS[1]: the run's budget hash (max_* limits, started_at, used counters; paused_at and
-- waited_ms: human time is not agent time, so the wall clock stands still from paused_at
-- while the run waits for a human, and waited_ms, the time it waited before, is not
-- counted: tether.store.budgets.human_clock writes both in the commits that start and end a wait)
-- KEYS[2]: the run's set of granted reservations that a commit requires (versioned.lua
-- checks the member before it commits: RunStore._commit's tool calls)
-- ARGV[1]: 'reserve', 'settle', or 'check' (a reservation of nothing: the wall-time
-- check of an action, which charges nothing twice and so keeps no marker)
-- ARGV[2]: reservation id
-- ARGV[3..6]: steps, tool_calls, tokens, cost_usd (deltas; settle may be negative)
-- ARGV[7]: now, in seconds since the epoch
-- ARGV[8]: '' or a commit's token, with KEYS[3] the run's hash: the reservation is made
-- only if the hash's 'commit' field holds it, that is when the commit sent just before
-- it in the same pipeline won and nothing committed since.
-- ARGV[9] (reserve): '1' to leave the granted marker in KEYS[2] as well, for a commit.
-- ARGV[10..12] (reserve, unguarded, optional): a settlement applied first, whatever
-- comes of the reservation: its reservation id, tokens, cost_usd (deltas). It saves a
-- step the settle's own script call.
-- Markers make retries harmless: 'reserve:<id>' and 'settle:<id>' are fields of the
-- budget hash, read by the one HMGET and written by the one HSET a call makes. A budget
-- opened before they moved there (no 'markers' field) keeps them in KEYS[2], as it did.
-- Returns {1, 'ok'} | {1, 'duplicate'} | {0, reason, limit}: limit names what refused
-- (steps, tool_calls, tokens, cost_usd, wall_s; '' when no budget is open);
-- {-1, 'skipped'} when a guarded reservation's commit did not win (nothing is spent).
-- 'extend' (may a human raise a limit?): ARGV[2] the escalation id, ARGV[3] the limit
-- (steps, tool_calls, tokens, cost_usd, wall_s), ARGV[4] the amount, ARGV[5] the ceiling
-- ('' for none), ARGV[6] who extends (Decision.extension_id). One extension per escalation:
-- the same extender again gets {1, 'duplicate', limit}, anyone else {0, reason, limit}.
-- It only answers: the raise is written by the escalation record's commit
-- (tether.store.budgets.Budgets.extension_writes), so a decision that loses raises nothing.
local op, rid = ARGV[1], ARGV[2]

if op == 'extend' then
  local field, by, ceiling, who = ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
  local done = redis.call('HGET', KEYS[1], 'extended:' .. rid)
  if done then
    if done == who then return {1, 'duplicate', field} end
    return {0, 'escalation ' .. rid .. ' was already extended (' .. done .. ')', field}
  end
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return {0, 'no budget is open for this run: it is unknown or has expired', ''}
  end
  local current = redis.call('HGET', KEYS[1], 'max_' .. field)
  if current == false or current == '' then
    return {0, 'max_' .. field .. ' is unbounded: there is nothing to extend', field}
  end
  local raised = tonumber(current) + by
  if ceiling == '' then
    return {0, 'the agent declares no ceiling for max_' .. field .. ': it cannot be extended', field}
  end
  if raised > tonumber(ceiling) then
    return {0, string.format('max_%s=%s + %s = %s would pass the ceiling %s; extend by at most %s',
      field, current, ARGV[4], tostring(raised), ceiling, tostring(tonumber(ceiling) - tonumber(current))), field}
  end
  return {1, 'ok', field}
end

if ARGV[8] and ARGV[8] ~= '' and redis.call('HGET', KEYS[3], 'commit') ~= ARGV[8] then
  return {-1, 'skipped'}
end

local axes = {'steps', 'tool_calls', 'tokens', 'cost_usd'}
local delta = {
  steps = tonumber(ARGV[3]), tool_calls = tonumber(ARGV[4]),
  tokens = tonumber(ARGV[5]), cost_usd = tonumber(ARGV[6]),
}
local now = tonumber(ARGV[7])
local marker = op .. ':' .. rid
local settlement = op == 'reserve' and ARGV[10] and ARGV[10] ~= '' and ('settle:' .. ARGV[10])

-- One read of every limit, counter and marker. Every open budget holds started_at:
-- without it there is no run (it never started here or has expired); refuse, and
-- leave no stray keys behind it.
local h = redis.call('HMGET', KEYS[1], 'max_wall_s', 'started_at',
  'max_steps', 'max_tool_calls', 'max_tokens', 'max_cost_usd',
  'steps', 'tool_calls', 'tokens', 'cost_usd', 'paused_at', 'waited_ms',
  'markers', marker, settlement or marker)
if h[2] == false then
  return {0, 'no budget is open for this run: it is unknown or has expired', ''}
end
local in_hash = h[13] ~= false

local function applied(name, read)
  if in_hash then return read ~= false end
  return redis.call('SISMEMBER', KEYS[2], name) == 1
end

-- Counters are written back in one HSET from the values just read, not one HINCRBY
-- each, and the markers with them.
local used, changed = {}, {}
for i, field in ipairs(axes) do used[field] = tonumber(h[6 + i] or '0') end
local write = {'HSET', KEYS[1]}
local function mark(name)
  if in_hash then
    write[#write + 1] = name
    write[#write + 1] = '1'
  else
    redis.call('SADD', KEYS[2], name)
  end
end
local function add(field, by)
  if by ~= 0 then
    used[field] = used[field] + by
    changed[field] = true
  end
end
local function flush()
  for _, field in ipairs(axes) do
    if changed[field] then
      write[#write + 1] = field
      -- %.17g keeps every bit of a float, as HINCRBYFLOAT does.
      write[#write + 1] = field == 'cost_usd' and string.format('%.17g', used[field])
        or string.format('%d', used[field])
    end
  end
  if #write > 2 then redis.call(unpack(write)) end
end
local function settle(name, read, tokens, cost_usd)
  if applied(name, read) then return false end
  add('tokens', tokens)
  add('cost_usd', cost_usd)
  mark(name)
  return true
end

if op == 'settle' then
  local fresh = settle(marker, h[14], delta.tokens, delta.cost_usd)
  flush()
  return {1, fresh and 'ok' or 'duplicate'}
end
if settlement then settle(settlement, h[15], tonumber(ARGV[11]), tonumber(ARGV[12])) end

if op ~= 'check' and applied(marker, h[14]) then
  flush()
  return {1, 'duplicate'}
end

local function limit(v)
  if v == false or v == '' then return nil end
  return tonumber(v)
end
local wall = limit(h[1])
local elapsed = (limit(h[11]) or now) - tonumber(h[2]) - (limit(h[12]) or 0) / 1000
if wall ~= nil and elapsed > wall then
  flush()
  return {0, string.format('wall time %.1fs (time waiting for humans not counted) is over '
    .. 'max_wall_s=%s', elapsed, wall), 'wall_s'}
end
for i, field in ipairs(axes) do
  local max = limit(h[2 + i])
  local want = delta[field]
  if max ~= nil and want > 0 and used[field] + want > max then
    flush()
    return {0, string.format('%s: %s used + %s requested exceeds max_%s=%s',
      field, tostring(used[field]), tostring(want), field, tostring(max)), field}
  end
end
if op == 'check' then return {1, 'ok'} end
for _, field in ipairs(axes) do add(field, delta[field]) end
mark(marker)
if ARGV[9] == '1' and in_hash then redis.call('SADD', KEYS[2], marker) end
flush()
return {1, 'ok'}
