"""A deferred message taken by a publisher that dies before sending it is sent again
within seconds (invariant 5), not left to the reconciler's stall threshold; real Redis
and a real OpenAI-compatible server reached by the openai client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.test_ratelimited_steps import (
    limited_runtime,
    one_ended_one_waiting,
    planned_steps,
)
from tether.models.scripted import from_turns, text
from tether.planner import ratelimited
from tether.store import deferred, keys
from tether.testing.openai_server import ScriptedOpenAIServer


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(from_turns([text("done")]), retry_after_s=2.0) as running:
        yield running


def test_an_entry_taken_by_a_publisher_that_died_is_sent_again_soon(
    redis_url: str, server: ScriptedOpenAIServer
) -> None:
    rt, _, waiting = one_ended_one_waiting(redis_url, server, "claim")
    client = rt.store.client
    entry = deferred.step_entry(waiting, 0)
    now, _ = deferred.peek(client)
    deferred.defer(client, entry, now - 1)
    client.delete("tether.plan")

    # A publisher takes the entry and dies before publishing it.
    assert deferred.take_due(client, now) == [entry]
    # Another publisher does not send it at once (the first may be sending it) ...
    assert ratelimited.publish_due(rt, now) == []
    # ... but once the taker's claim has run out, a few seconds on, it goes.
    later = now + deferred.CLAIM_S + 0.01
    assert ratelimited.publish_due(rt, later) == ["step 0"]
    assert planned_steps(rt) == [{"run_id": waiting, "step": 0}]
    # Sent: it leaves the set, and nothing sends it again.
    assert deferred.peek(client)[1] is None
    assert ratelimited.publish_due(rt, later + deferred.CLAIM_S + 1) == []
    # The reconciler would only have sent it after TETHER_RUN_STALLED_AFTER_S.
    assert rt.settings.run_stalled_after_s / 10 > deferred.CLAIM_S


def test_an_entry_deferred_again_while_it_was_being_sent_stays(
    redis_url: str, server: ScriptedOpenAIServer
) -> None:
    rt = limited_runtime(redis_url, server, window_s=60.0)
    client = rt.store.client
    now, _ = deferred.peek(client)
    entry = deferred.step_entry("run_1", 4)
    deferred.defer(client, entry, now - 1)
    (taken,) = deferred.take_due(client, now)
    # Its step ran from the message just sent and was held back once more.
    deferred.defer(client, entry, now + 30)
    deferred.sent(client, taken, now)
    assert deferred.waiting(client, [entry]) == [pytest.approx(now + 30)]
    assert client.zcard(keys.DEFERRED) == 1


def test_a_forged_entry_is_dropped_and_holds_back_none_taken_with_it(
    redis_url: str, server: ScriptedOpenAIServer
) -> None:
    rt, _, waiting = one_ended_one_waiting(redis_url, server, "forged")
    client = rt.store.client
    client.delete(keys.DEFERRED, "tether.plan")
    now, _ = deferred.peek(client)
    client.zadd(keys.DEFERRED, {"forged": now - 2, "run_x step": now - 2})
    deferred.defer(client, deferred.step_entry(waiting, 0), now - 1)
    assert ratelimited.publish_due(rt, now) == ["step 0"]
    assert planned_steps(rt) == [{"run_id": waiting, "step": 0}]
    assert client.zcard(keys.DEFERRED) == 0  # dropped, not taken again and again
