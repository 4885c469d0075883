-- Record a dead letter once per message, however often its message is delivered.
-- KEYS[1]: the message's seen marker; KEYS[2]: the dead-letter stream
-- ARGV[1]: seconds the marker lives; ARGV[2]: the stream's approximate maxlen
-- ARGV[3 ..]: the entry's field/value pairs
-- Returns the new entry's id, or false when this message already has one.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return false
end
local entry = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*'}
for i = 3, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
return redis.call(unpack(entry))
