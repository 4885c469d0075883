-- Record a landed message as this consumer's unacknowledged delivery, only if it is
-- still on the consumer's landing list: a shutdown's give-back (or a recovery) that
-- took it first has put it back on its queue, and then the consumer must not run it.
-- One message is either back on its queue or in a worker's hands, never both.
-- KEYS[1]: the landing list; KEYS[2]: kombu's unacked index (zset);
-- KEYS[3]: kombu's unacked hash; KEYS[4]: the consumer's held set
-- ARGV[1]: the landed message as it lies on the list; ARGV[2]: this delivery's tag;
-- ARGV[3]: the index score (kombu's: the worker's clock); ARGV[4]: what kombu restores from
-- Returns 1 when recorded, 0 when the message was no longer there.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[2])
return 1
