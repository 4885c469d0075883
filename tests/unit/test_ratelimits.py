"""Shared rate limits in Redis (tether.store.ratelimits): charging, queueing, settling,
pauses, and the deferred set (tether.store.deferred)."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from tether.models.openai import OpenAIModel
from tether.models.scripted import ScriptedModel
from tether.runtime import Runtime
from tether.store import deferred
from tether.store.ratelimits import (
    RateLimit,
    RateLimits,
    endpoint_of,
    model_limiter,
    tool_limiter,
)


@pytest.fixture
def limits(runtime: Runtime) -> RateLimits:
    return RateLimits(runtime.store.client)


def per_s(requests: int, burst: float = 1.0) -> RateLimit:
    return RateLimit(requests=requests, window_s=1.0, burst=burst)


def test_a_full_bucket_lets_the_burst_go_and_queues_the_rest_one_interval_apart(
    limits: RateLimits,
) -> None:
    limiter = model_limiter("http://e/v1", "m", per_s(4))
    slots = [limits.acquire(limiter, f"call{i}") for i in range(8)]
    assert [s.wait_s for s in slots[:4]] == [0.0] * 4
    assert [s.new for s in slots] == [False] * 4 + [True] * 4
    # Slots are times on Redis's clock: read from the first call, so that a slow machine's
    # time between the calls does not move them.
    assert [s.start - slots[0].now for s in slots[4:]] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0], abs=0.01
    )


def test_burst_below_one_keeps_headroom(limits: RateLimits) -> None:
    # 10 per 10 s: one a second, so the time the calls take does not refill the bucket.
    limiter = model_limiter("http://e/v1", "m", RateLimit(requests=10, window_s=10.0, burst=0.5))
    slots = [limits.acquire(limiter, f"call{i}") for i in range(6)]
    assert [s.wait_s for s in slots[:5]] == [0.0] * 5
    assert slots[5].start - slots[0].now == pytest.approx(1.0, abs=0.01)


def test_asking_again_before_the_slot_gets_the_same_slot_and_waits_once(
    limits: RateLimits,
) -> None:
    limiter = model_limiter("http://e/v1", "m", per_s(1))
    assert limits.acquire(limiter, "run_a:1").wait_s == 0.0
    second = limits.acquire(limiter, "run_b:1")
    again = limits.acquire(limiter, "run_b:1")
    assert (second.new, again.new) == (True, False)
    assert again.start == second.start
    third = limits.acquire(limiter, "run_c:1")
    assert third.start - second.start == pytest.approx(1.0, abs=0.01)


def test_a_call_is_charged_when_it_goes_so_late_callers_cannot_bunch(
    limits: RateLimits,
) -> None:
    limiter = model_limiter("http://e/v1", "m", per_s(2))
    first, second = (limits.acquire(limiter, x) for x in "ab")
    assert (first.wait_s, second.wait_s) == (0.0, 0.0)
    assert limits.acquire(limiter, "c").start - first.now == pytest.approx(0.5, abs=0.01)
    assert limits.acquire(limiter, "d").start - first.now == pytest.approx(1.0, abs=0.01)
    time.sleep(1.2)  # both come late, together: the bucket decides, not their old slots
    late = limits.acquire(limiter, "c")
    assert late.wait_s == 0.0
    assert limits.acquire(limiter, "d").wait_s == 0.0
    # Two went just now: the next waits for the bucket (charged at 1.2 s, not at 0.5 and 1).
    assert limits.acquire(limiter, "e").start - late.now == pytest.approx(0.5, abs=0.05)


def test_callers_queued_go_before_a_newcomer(limits: RateLimits) -> None:
    limiter = model_limiter("http://e/v1", "m", per_s(1))
    limits.acquire(limiter, "a")
    queued = limits.acquire(limiter, "b")
    time.sleep(queued.wait_s + 0.05)
    # The bucket would let one go, but b waited for it.
    assert limits.acquire(limiter, "newcomer").wait_s > 0.5
    assert limits.acquire(limiter, "b").wait_s == 0.0


def test_tokens_are_charged_at_the_bound_and_the_unused_given_back(limits: RateLimits) -> None:
    limiter = model_limiter("http://e/v1", "m", RateLimit(tokens=1000, window_s=10.0, burst=1.0))
    first = limits.acquire(limiter, "a", tokens=800)
    assert first.wait_s == 0.0
    limits.settle(limiter, "a", tokens_unused=700)  # it used 100
    # Without the 700 back, this one would wait 6 s for its 800.
    assert limits.acquire(limiter, "b", tokens=800).wait_s == 0.0
    # 900 of 1000 charged: a call bounded at 400 waits for 300 tokens (3 s).
    assert limits.acquire(limiter, "c", tokens=400).start - first.now == pytest.approx(
        3.0, abs=0.01
    )


def test_a_call_over_the_whole_allowance_waits_for_a_full_bucket(limits: RateLimits) -> None:
    limiter = model_limiter("http://e/v1", "m", RateLimit(tokens=100, window_s=1.0, burst=1.0))
    first = limits.acquire(limiter, "a", tokens=50)
    assert first.wait_s == 0.0
    whole = limits.acquire(limiter, "b", tokens=10_000)
    assert whole.start - first.now == pytest.approx(0.5, abs=0.01)


def test_a_pause_holds_every_model_of_the_endpoint(limits: RateLimits) -> None:
    limited = model_limiter("http://e/v1", "m", per_s(1))
    other_model = model_limiter("http://e/v1", "other", None)
    other_endpoint = model_limiter("http://f/v1", "m", None)
    assert limits.acquire(limited, "a").wait_s == 0.0
    before = limits.acquire(limited, "b")  # queued for 1 s from now
    held = limits.pause(limited, 2.0)
    assert held.wait_s == pytest.approx(2.0, abs=0.02)
    # A shorter pause does not shorten a longer one.
    assert limits.pause(other_model, 0.5).start == held.start
    assert limits.acquire(other_model, "x").start == pytest.approx(held.start)
    assert limits.acquire(other_endpoint, "y").wait_s == 0.0
    # The slot given before the pause began ends inside it: b is given one after it.
    again = limits.acquire(limited, "b")
    assert again.new and again.start >= held.start > before.start


def test_no_limit_and_no_pause_writes_nothing(limits: RateLimits, runtime: Runtime) -> None:
    slot = limits.acquire(model_limiter("http://e/v1", "m", None), "a")
    assert (slot.wait_s, slot.new) == (0.0, False)
    assert runtime.store.client.keys("tether:ratelimit:*") == []


def test_tool_calls_per_second(limits: RateLimits) -> None:
    limiter = tool_limiter("search", 2.0)
    slots = [limits.acquire(limiter, f"act{i}") for i in range(4)]
    assert [s.wait_s for s in slots[:2]] == [0.0, 0.0]
    assert [s.start - slots[0].now for s in slots[2:]] == pytest.approx([0.5, 1.0], abs=0.01)
    slow = tool_limiter("slow", 0.5)
    first, second = (limits.acquire(slow, f"s{i}") for i in range(2))
    assert first.wait_s == 0.0
    assert second.start - first.now == pytest.approx(2.0, abs=0.01)


def test_endpoints_of_model_clients() -> None:
    assert endpoint_of(OpenAIModel("gpt-4o-mini", base_url="http://h:1/v1/")) == "http://h:1/v1"
    assert endpoint_of(OpenAIModel("gpt-4o-mini")) == "https://api.openai.com/v1"
    assert endpoint_of(ScriptedModel([])) == "tether.scripted"


def test_deferred_entries_are_taken_once_when_due(runtime: Runtime) -> None:
    client = runtime.store.client
    now, first = deferred.peek(client)
    assert first is None
    deferred.defer(client, deferred.step_entry("run_1", 3), now - 0.1)
    deferred.defer(client, deferred.action_entry("run_1", "act_9"), now + 60)
    assert deferred.peek(client)[1] == pytest.approx(now - 0.1)
    assert deferred.take_due(client, now) == ["run_1 step 3"]
    assert deferred.take_due(client, now + 1) == []
    assert deferred.parse_entry("run_1 action act_9") == ("run_1", "action", "act_9")
    assert deferred.waiting(client, ["run_1 step 3", "run_1 action act_9"]) == [
        pytest.approx(now + deferred.CLAIM_S),  # its taker's until sent (deferred.sent)
        pytest.approx(now + 60),
    ]


def test_a_limit_that_limits_nothing_is_refused() -> None:
    with pytest.raises(ValidationError, match="neither requests nor tokens"):
        RateLimit(window_s=60)
    with pytest.raises(ValidationError):
        RateLimit(requests=10, burst=0)
