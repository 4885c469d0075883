"""deadletters.lua's two guards: once per message, and only while the message is landed."""

from __future__ import annotations

import redis

from tether.store import keys
from tether.worker import deadletters

FIELDS = {"task": "tether.plan", "reason": "why"}


def test_a_message_has_one_dead_letter_however_often_it_is_recorded(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    seen = keys.dead_letter_seen("msg-1")
    first = deadletters.write(client, FIELDS, "seen", seen, 60)
    assert first is not None
    assert deadletters.write(client, FIELDS, "seen", seen, 60) is None
    assert [fields for _, fields in client.xrange(keys.DEAD_STREAM)] == [FIELDS]
    assert 0 < client.ttl(seen) <= 60


def test_a_landed_message_is_kept_once_and_only_while_it_is_on_the_landing_list(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    landing = keys.consumer_landing("consumer-1")
    client.rpush(landing, "other", "garbled")
    assert deadletters.write(client, FIELDS, "landed", landing, "garbled") is not None
    assert client.lrange(landing, 0, -1) == ["other"]
    # Taken off the list first (a give-back, a recovery): whoever takes it next keeps it.
    assert deadletters.write(client, FIELDS, "landed", landing, "garbled") is None
    assert client.xlen(keys.DEAD_STREAM) == 1
