-- Queue a "still waiting" notification once per escalation and reminder: the marker
-- and the stream entry together.
-- KEYS[1]: the reminder's marker; KEYS[2]: the notification stream
-- ARGV[1]: seconds the marker lives; ARGV[2]: the stream's approximate maxlen;
-- ARGV[3]: the escalation id; ARGV[4]: the event; ARGV[5]: the body
-- Returns 1 when queued, 0 when this reminder was queued already.
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
    'escalation_id', ARGV[3], 'event', ARGV[4], 'body', ARGV[5])
  return 1
end
return 0
