-- Keep the visibility timeout off every message a registered consumer holds: its
-- index score becomes now, whatever the number held. A dead consumer's messages go
-- back by recovery (tether.transport.consumers.recover_dead_consumers) within seconds instead.
-- KEYS[1]: kombu's unacked index; KEYS[2..]: the held sets of the registered consumers
-- ARGV[1]: now, on the clock kombu scores the index with (the workers')
-- Returns how many messages were protected.
local protected = 0
for i = 2, #KEYS do
  local held = redis.call('SMEMBERS', KEYS[i])
  for _, tag in ipairs(held) do
    protected = protected + redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], tag)
  end
end
return protected
