-- Atomic budget reservation and settlement for one run.
-- KEYS[1]: the run's budget hash (max_* limits, started_at, used counters; paused_at and
-- waited_ms: human time is not agent time, so the wall clock stands still from paused_at
-- while the run waits for a human, and waited_ms, the time it waited before, is not
-- counted: tether.budgets.human_clock writes both in the commits that start and end a wait)
-- KEYS[2]: the set of reservation ids already applied (makes retries harmless)
-- ARGV[1]: 'reserve', 'settle', or 'check' (a reservation of nothing: the wall-time
-- check of an action, which charges nothing twice and so keeps no marker)
-- ARGV[2]: reservation id
-- ARGV[3..6]: steps, tool_calls, tokens, cost_usd (deltas; settle may be negative)
-- ARGV[7]: now, in seconds since the epoch
-- ARGV[8] (reserve, optional): a commit's token, with KEYS[3] the run's hash: the
-- reservation is made only if the hash's 'commit' field holds it, that is when the
-- commit sent just before it in the same pipeline won and nothing committed since.
-- Returns {1, 'ok'} | {1, 'duplicate'} | {0, reason, limit}: limit names what refused
-- (steps, tool_calls, tokens, cost_usd, wall_s; '' when no budget is open);
-- {-1, 'skipped'} when a guarded reservation's commit did not win (nothing is spent).
-- 'extend' (may a human raise a limit?): ARGV[2] the escalation id, ARGV[3] the limit
-- (steps, tool_calls, tokens, cost_usd, wall_s), ARGV[4] the amount, ARGV[5] the ceiling
-- ('' for none), ARGV[6] who extends (Decision.extension_id). One extension per escalation:
-- the same extender again gets {1, 'duplicate', limit}, anyone else {0, reason, limit}.
-- It only answers: the raise is written by the escalation record's commit
-- (tether.budgets.Budgets.extension_writes), so a decision that loses raises nothing.
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
local axes = {'steps', 'tool_calls', 'tokens', 'cost_usd'}
local delta = {
  steps = tonumber(ARGV[3]), tool_calls = tonumber(ARGV[4]),
  tokens = tonumber(ARGV[5]), cost_usd = tonumber(ARGV[6]),
}
local now = tonumber(ARGV[7])
local marker = op .. ':' .. rid
local marked = op ~= 'check'

if ARGV[8] and redis.call('HGET', KEYS[3], 'commit') ~= ARGV[8] then
  return {-1, 'skipped'}
end

if marked and redis.call('SISMEMBER', KEYS[2], marker) == 1 then
  return {1, 'duplicate'}
end

if op == 'reserve' or op == 'check' then
  -- One read of every limit and counter. Every open budget holds started_at: without
  -- it there is no run (it never started here or has expired); refuse, and leave no
  -- stray keys behind it.
  local h = redis.call('HMGET', KEYS[1], 'max_wall_s', 'started_at',
    'max_steps', 'max_tool_calls', 'max_tokens', 'max_cost_usd',
    'steps', 'tool_calls', 'tokens', 'cost_usd', 'paused_at', 'waited_ms')
  if h[2] == false then
    return {0, 'no budget is open for this run: it is unknown or has expired', ''}
  end
  local function limit(v)
    if v == false or v == '' then return nil end
    return tonumber(v)
  end
  local wall = limit(h[1])
  local elapsed = (limit(h[11]) or now) - tonumber(h[2]) - (limit(h[12]) or 0) / 1000
  if wall ~= nil and elapsed > wall then
    return {0, string.format('wall time %.1fs (time waiting for humans not counted) is over '
      .. 'max_wall_s=%s', elapsed, wall), 'wall_s'}
  end
  -- Counters are written back in one HSET from the values just read, not one
  -- HINCRBY each: a reservation is the commonest script a step runs.
  local write = {'HSET', KEYS[1]}
  for i, field in ipairs(axes) do
    local max = limit(h[2 + i])
    local want = delta[field]
    local used = tonumber(h[6 + i] or '0')
    if max ~= nil and want > 0 and used + want > max then
      return {0, string.format('%s: %s used + %s requested exceeds max_%s=%s',
        field, tostring(used), tostring(want), field, tostring(max)), field}
    end
    if want ~= 0 then
      write[#write + 1] = field
      -- %.17g keeps every bit of a float, as HINCRBYFLOAT does.
      write[#write + 1] = field == 'cost_usd' and string.format('%.17g', used + want)
        or string.format('%d', used + want)
    end
  end
  if not marked then return {1, 'ok'} end
  if #write > 2 then redis.call(unpack(write)) end
  redis.call('SADD', KEYS[2], marker)
  return {1, 'ok'}
end

for _, field in ipairs({'steps', 'tool_calls', 'tokens'}) do
  if delta[field] ~= 0 then redis.call('HINCRBY', KEYS[1], field, delta[field]) end
end
if delta.cost_usd ~= 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'cost_usd', ARGV[6]) end
redis.call('SADD', KEYS[2], marker)
return {1, 'ok'}
