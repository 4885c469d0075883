-- Claim one attempt of a non-idempotent action: the in-flight marker says an
-- attempt started, so a later delivery that finds it (and no result) knows the
-- outcome is unknown.
-- KEYS[1]: the action's in-flight marker
-- ARGV[1]: what this attempt writes there: "1" for the first attempt, or
--          "rerun:<escalation id>" for the one re-run a human's decision allowed
-- ARGV[2]: seconds the marker lives
-- Returns 1 when the attempt may run; 0 when an attempt with no result already
-- used the first try, or this very approval.
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or (held and ARGV[1] == '1') then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
