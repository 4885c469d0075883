-- Compare-and-set of a versioned document stored as a hash {doc, version}.
-- KEYS[1]: the document's hash
-- ARGV[1]: the version the writer read (0 when it expects no document yet)
-- ARGV[2]: the new document
-- Returns the new version, or -1 when another writer committed first.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return -1
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'version', current + 1)
return current + 1
