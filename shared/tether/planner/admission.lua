-- Admission of runs under the caps: runs in flight per tenant and in all, checked and
-- counted in one script, so that workers scaled out cannot start one run too many.
-- Every key carries the {admission} hash tag (one slot on a Redis Cluster).
-- KEYS[1]: events (hash event id -> TaskEvent JSON: waiting, or admitted and not ended)
-- KEYS[2], KEYS[3]: waiting interactive / batch events (sorted sets, scores 0, members
--   tenant NUL seq NUL event id: a tenant's oldest first)
-- KEYS[4], KEYS[5]: tenants with interactive / batch events waiting -> the turn they
--   were last served (the lowest is served next: round robin between tenants)
-- KEYS[6]: running (hash event id -> tenant), KEYS[7]: counts (hash tenant -> runs in
--   flight), KEYS[8]: admitted (sorted set event id -> when), KEYS[9]: done (sorted set
--   event id -> when its slot was given back), KEYS[10]: counters (hash seq, turn, releases),
--   KEYS[11]: since (hash event id -> when it was first published, as intake first saw it)
-- ARGV[1]: what to do: 'admit', 'release' or 'next'; ARGV[2]: now; ARGV[3]: runs in
--   flight in all (-1: unlimited); ARGV[4]: per tenant by default (-1: unlimited);
--   ARGV[5]: JSON object tenant -> cap; ARGV[6]: every Nth admission from waiting goes to
--   a batch event if one may start; ARGV[7]: most admissions from waiting in this call;
--   ARGV[8]: seconds a given-back slot is remembered
-- 'admit': ARGV[9]: event id, ARGV[10]: tenant, ARGV[11]: 'interactive' or 'batch',
--   ARGV[12]: event JSON, ARGV[13]: when it was published. An event waits (joins the waiting set once, however often it
--   is delivered), then the waiting events that the caps allow are admitted.
-- 'release': ARGV[9]: event id whose run ended; its slot is given back once.
-- 'next': only admits what the caps allow.
-- Returns {verdict, since, admitted event JSON...}: for 'admit', since is when the event
-- was first published, and verdict 1 when this event may
-- start now, 0 when it waits, 2 when its slot was given back already (its run exists or
-- existed: it counts nothing); for 'release', 1 when a slot was given back, else 0. The
-- others admitted here (not this event) are for the caller to publish again.
local events, running, counts, admitted, done, counters, since = KEYS[1], KEYS[6],
  KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local waiting = {interactive = KEYS[2], batch = KEYS[3]}
local tenants = {interactive = KEYS[4], batch = KEYS[5]}
local now = tonumber(ARGV[2])
local global_cap = tonumber(ARGV[3])
local default_cap = tonumber(ARGV[4])
local caps = cjson.decode(ARGV[5])
local batch_every = tonumber(ARGV[6])
local most = tonumber(ARGV[7])
local SEP = '\0'

local function cap_of(tenant)
  local cap = caps[tenant]
  if cap == nil then return default_cap end
  return tonumber(cap)
end

local function has_room(tenant)
  local cap = cap_of(tenant)
  return cap < 0 or tonumber(redis.call('HGET', counts, tenant) or '0') < cap
end

local function oldest(class, tenant)
  local found = redis.call('ZRANGE', waiting[class], '[' .. tenant .. SEP,
    '(' .. tenant .. '\1', 'BYLEX', 'LIMIT', 0, 1)
  return found[1]
end

-- The next tenant to serve in a class: the one served longest ago that is under its cap.
local function next_tenant(class)
  for _, tenant in ipairs(redis.call('ZRANGE', tenants[class], 0, -1)) do
    if has_room(tenant) then return tenant end
  end
  return nil
end

local function admit_one()
  local releases = tonumber(redis.call('HGET', counters, 'releases') or '0')
  local order = {'interactive', 'batch'}
  if (releases + 1) % batch_every == 0 then order = {'batch', 'interactive'} end
  for _, class in ipairs(order) do
    local tenant = next_tenant(class)
    if tenant then
      local member = oldest(class, tenant)
      if member then
        redis.call('ZREM', waiting[class], member)
        local turn = redis.call('HINCRBY', counters, 'turn', 1)
        if oldest(class, tenant) then
          redis.call('ZADD', tenants[class], turn, tenant)
        else
          redis.call('ZREM', tenants[class], tenant)
        end
        redis.call('HINCRBY', counters, 'releases', 1)
        local event_id = string.sub(member, string.len(tenant) + 23)
        redis.call('HSET', running, event_id, tenant)
        redis.call('HINCRBY', counts, tenant, 1)
        redis.call('ZADD', admitted, now, event_id)
        return event_id
      end
      redis.call('ZREM', tenants[class], tenant)  -- listed with nothing waiting: a repair
      return ''
    end
  end
  return nil
end

local function admit_waiting()
  local ids = {}
  while #ids < most do
    if global_cap >= 0 and redis.call('HLEN', running) >= global_cap then break end
    local event_id = admit_one()
    if event_id == nil then break end
    if event_id ~= '' then ids[#ids + 1] = event_id end
  end
  return ids
end

local function reply(verdict, first, ids, except)
  local out = {verdict, first}
  for _, id in ipairs(ids) do
    if id ~= except then out[#out + 1] = redis.call('HGET', events, id) end
  end
  return out
end

local op = ARGV[1]
if op == 'admit' then
  local event_id, tenant, class = ARGV[9], ARGV[10], ARGV[11]
  if redis.call('ZSCORE', done, event_id) then return {2, ARGV[13]} end
  redis.call('HSETNX', since, event_id, ARGV[13])
  local first = redis.call('HGET', since, event_id)
  if redis.call('HGET', running, event_id) then return {1, first} end
  if not redis.call('HGET', events, event_id) then
    redis.call('HSET', events, event_id, ARGV[12])
    local seq = redis.call('HINCRBY', counters, 'seq', 1)
    -- 20 digits: the member's event id starts 22 characters after the tenant.
    redis.call('ZADD', waiting[class], 0, tenant .. SEP .. string.format('%020d', seq) .. SEP
      .. event_id)
    local turn = tonumber(redis.call('HGET', counters, 'turn') or '0')
    redis.call('ZADD', tenants[class], 'NX', turn, tenant)
  end
  local ids = admit_waiting()
  local verdict = 0
  if redis.call('HGET', running, event_id) then verdict = 1 end
  return reply(verdict, first, ids, event_id)
end

local released = 0
if op == 'release' then
  local event_id = ARGV[9]
  local tenant = redis.call('HGET', running, event_id)
  if tenant then
    redis.call('HDEL', running, event_id)
    if redis.call('HINCRBY', counts, tenant, -1) <= 0 then redis.call('HDEL', counts, tenant) end
    redis.call('ZREM', admitted, event_id)
    redis.call('HDEL', events, event_id)
    redis.call('HDEL', since, event_id)
    redis.call('ZADD', done, now, event_id)
    released = 1
  end
  redis.call('ZREMRANGEBYSCORE', done, '-inf', now - tonumber(ARGV[8]))
end
return reply(released, 0, admit_waiting(), nil)
