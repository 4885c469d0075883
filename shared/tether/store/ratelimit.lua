-- Shared rate limits: GCRA (the generic cell rate algorithm, a token bucket kept as one
-- timestamp per limit) over Redis's own clock, so every worker reads the same time.
-- KEYS[1]: the endpoint's pause (epoch seconds until which a 429's Retry-After holds it)
-- KEYS[2]: the slot of one call waiting its turn (the epoch seconds it may try at)
-- KEYS[3]: the queue: when the next caller to wait may try
-- KEYS[4..]: one theoretical arrival time (TAT) per limit, in the order of ARGV's triples
-- ARGV[1]: 'acquire', 'settle' or 'pause'
-- acquire: ARGV[2] how long a slot is kept past its time (ms); then per limit: the
--   seconds one unit stands for, the burst in units, and the call's units. A call is
--   charged when it goes, at the moment it goes: a caller whose slot has come (or one
--   that finds no one queued) goes if every limit allows it now and no pause holds, and
--   is charged then; any other is given a slot behind the queue, no earlier than the
--   limits would allow it, the queue moving on by the call's units. A caller that asks
--   again before its slot gets the same slot (a redelivered message waits once).
--   Returns {when to try (now: go), 1 if a slot was given now else 0, now}.
-- settle: drops the slot; per limit: the seconds one unit stands for, the units to give
--   back (what was charged beyond what the call used). Returns now.
-- pause: ARGV[2] seconds from now; the later of the pause held and this one is kept, and
--   returned with now.
local function fmt(x) return string.format('%.6f', x) end
local function keep(key, value, now, extra_ms)
  redis.call('SET', key, fmt(value), 'PX', math.max(1, math.ceil((value - now) * 1000)) + extra_ms)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local op = ARGV[1]
local paused = tonumber(redis.call('GET', KEYS[1]) or '0') or 0

if op == 'pause' then
  local until_s = now + tonumber(ARGV[2])
  if until_s > paused then
    keep(KEYS[1], until_s, now, 1000)
    paused = until_s
  end
  return {fmt(paused), fmt(now)}
end

if op == 'settle' then
  redis.call('DEL', KEYS[2])
  for i = 4, #KEYS do
    local interval, back = tonumber(ARGV[2 * i - 6]), tonumber(ARGV[2 * i - 5])
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    if back > 0 and tat > now then
      keep(KEYS[i], math.max(now, tat - back * interval), now, 1000)
    end
  end
  return fmt(now)
end

local slot = tonumber(redis.call('GET', KEYS[2]) or '')
if slot and slot > now and slot >= paused then
  return {fmt(slot), 0, fmt(now)}
end
local queue = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local need, spacing = math.max(0, paused - now), 0
local tats, costs, intervals = {}, {}, {}
for i = 4, #KEYS do
  local interval, burst, cost = tonumber(ARGV[3 * i - 9]), tonumber(ARGV[3 * i - 8]), tonumber(ARGV[3 * i - 7])
  -- A call larger than the whole burst could never go: it waits for a full bucket.
  cost = math.min(cost, burst)
  local tat = math.max(now, tonumber(redis.call('GET', KEYS[i]) or '0') or 0)
  need = math.max(need, tat + (cost - burst) * interval - now)
  spacing = math.max(spacing, cost * interval)
  tats[i], costs[i], intervals[i] = tat, cost, interval
end
-- Callers queued before this one go first, unless this one's own slot has come.
if need <= 0 and (slot or queue <= now) then
  for i = 4, #KEYS do
    keep(KEYS[i], tats[i] + costs[i] * intervals[i], now, 1000)
  end
  redis.call('DEL', KEYS[2])
  return {fmt(now), 0, fmt(now)}
end
local start = math.max(now + need, queue)
keep(KEYS[3], start + spacing, now, 1000)
keep(KEYS[2], start, now, tonumber(ARGV[2]))
return {fmt(start), 1, fmt(now)}
