-- Put a landed message back at the head of its queue, unless someone already did
-- (a consumer's own return and the shutdown thread's may race: one message, once).
-- KEYS[1]: the consumer's landing list, KEYS[2]: the queue; ARGV[1]: the message
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
