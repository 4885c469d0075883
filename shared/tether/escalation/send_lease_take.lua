-- Take a webhook send's lease, in the key that records the delivery ("1" once
-- delivered), so the check and the taking are one step.
-- KEYS[1]: the delivery marker; ARGV[1]: this sender's token; ARGV[2]: the lease in ms
-- Returns 'go' (taken), 'delivered' (nothing to send) or 'busy' (another sender holds it).
local held = redis.call('GET', KEYS[1])
if held == '1' then return 'delivered' end
if held then return 'busy' end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 'go'
