-- Compare-and-set of a versioned document stored as a hash {doc, version, ...}.
-- KEYS[1]: the document's hash
-- KEYS[2..]: keys to EXPIRE after ARGV[3] seconds once the write succeeds (may be none)
-- ARGV[1]: the version the writer read (0 when it expects no document yet)
-- ARGV[2]: the new document
-- ARGV[3]: seconds for the KEYS[2..] expiry (ignored when there are none)
-- ARGV[4..]: more field/value pairs to store beside the document (e.g. status)
-- Returns {new_version}, or {-1, current_version, current_doc} when another
-- writer committed first, so the loser can decide again without another read.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {-1, current, redis.call('HGET', KEYS[1], 'doc')}
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'version', current + 1, unpack(ARGV, 4))
for i = 2, #KEYS do
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3]))
end
return {current + 1}
