-- Admitting an event to its thread, atomically with the check that a run is going.
-- Every key is the thread's own (one slot on a Redis Cluster); the caller keeps the
-- indexes across threads (tether.memory.threads.admit).
-- KEYS[1]: the thread's queue (list of event ids); its head is the thread's run or next
-- KEYS[2]: the thread's queued events (hash event id -> event JSON)
-- KEYS[3]: the queued events' publish times (sorted set event id -> publish time)
-- KEYS[4]: the thread's sequence (hash: published, started, running)
-- KEYS[5]: sequence numbers of events intake rejected (sorted set seq -> seq)
-- ARGV[1]: event id, ARGV[2]: event JSON, ARGV[3]: now, ARGV[4]: 1 if the event's run
-- exists (it was admitted and started before), else 0,
-- ARGV[5]: when the event was published, ARGV[6]: its thread_seq ('' if none),
-- ARGV[7]: seconds a head waits for a missing earlier sequence number
-- A head that has been given its run is never passed. Behind it, an event goes before
-- every waiting one that is later: by thread_seq when both have one, else by publish time.
-- Returns {place, due}: place 0 means its run is the thread's to start now; -1 when its
-- run already exists; -2 when it is the head but an earlier sequence number has not
-- arrived yet (its turn comes when that one does, is rejected, or the wait is over at
-- due); a positive place is its place in the queue. due is 0 unless place is -2.
local seq = tonumber(ARGV[6])
-- A copy of an event published again with a number of its own (a resubmission by
-- event id): no event will come with that number, so no one waits for it.
local function nobody_has(number)
  if number then
    redis.call('ZADD', KEYS[5], number, number)
  end
end
if ARGV[4] == '1' then
  nobody_has(seq)
  return {-1, 0}
end
local running = redis.call('HGET', KEYS[4], 'running')

local function seq_of(event_id)
  local raw = redis.call('HGET', KEYS[2], event_id)
  if not raw then return nil end
  local value = cjson.decode(raw).thread_seq
  if type(value) ~= 'number' then return nil end
  return value
end

local at = redis.call('LPOS', KEYS[1], ARGV[1])
if at and seq ~= seq_of(ARGV[1]) then
  nobody_has(seq)
  seq = seq_of(ARGV[1])
end
if not at then
  local published = tonumber(ARGV[5])
  local queue = redis.call('LRANGE', KEYS[1], 0, -1)
  local first = 1
  if queue[1] ~= nil and queue[1] == running then
    first = 2
  end
  for i = first, #queue do
    local other = queue[i]
    local other_seq = seq_of(other)
    local later
    if seq and other_seq then
      later = other_seq > seq
    else
      later = tonumber(redis.call('ZSCORE', KEYS[3], other) or '0') > published
    end
    if later then
      redis.call('LINSERT', KEYS[1], 'BEFORE', other, ARGV[1])
      at = i - 1
      break
    end
  end
  if not at then
    at = redis.call('RPUSH', KEYS[1], ARGV[1]) - 1
  end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[3], published, ARGV[1])
end
if at > 0 or running == ARGV[1] then
  return {at, 0}
end

if seq then
  local started = tonumber(redis.call('HGET', KEYS[4], 'started') or '0')
  local expected = started + 1
  while expected < seq and redis.call('ZSCORE', KEYS[5], expected) do
    expected = expected + 1
  end
  if seq > expected then
    local due = tonumber(redis.call('ZSCORE', KEYS[3], ARGV[1])) + tonumber(ARGV[7])
    if tonumber(ARGV[3]) < due then
      return {-2, tostring(due)}
    end
  end
  if seq > started then
    redis.call('HSET', KEYS[4], 'started', seq)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', math.max(seq, started))
end
redis.call('HSET', KEYS[4], 'running', ARGV[1])
return {0, 0}
