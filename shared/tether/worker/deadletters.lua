-- Write a dead letter unless its guard says it is not this call's to write.
-- KEYS[1]: the guard; KEYS[2]: the dead-letter stream
-- ARGV[1]: what guards it:
--   'seen': KEYS[1] is the message's seen marker, set for ARGV[2] seconds: a message
--     has one dead letter however often it is delivered;
--   'landed': KEYS[1] is a consumer's landing list, and the letter keeps ARGV[2], the
--     landed message as it lies there, taking it off the list in the same step (put
--     back on its queue it would be taken again at once); a message no longer there was
--     taken by a give-back or a recovery first, and whoever takes it next keeps it.
-- ARGV[3]: the stream's approximate maxlen; ARGV[4 ..]: the entry's field/value pairs
-- Returns the new entry's id, or false when the guard refused it.
if ARGV[1] == 'landed' then
  if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then
    return false
  end
elseif not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  return false
end
local entry = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*'}
for i = 4, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
return redis.call(unpack(entry))
