-- Keep a landed message that cannot be parsed as a dead letter, and take it off the
-- landing list, in one step: put back on its queue it would be taken again at once,
-- and block every message behind it. Nothing is written when the message is no longer
-- on the landing list (a give-back or a recovery took it first: whoever takes it
-- next keeps it).
-- KEYS[1]: the consumer's landing list; KEYS[2]: the dead-letter stream
-- ARGV[1]: the landed message as it lies on the list; ARGV[2]: the stream's approximate
-- maxlen; ARGV[3 ..]: the entry's field/value pairs (tether.deadletters.record's)
-- Returns the new entry's id, or false when the message was no longer there.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return false
end
local entry = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*'}
for i = 3, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
return redis.call(unpack(entry))
