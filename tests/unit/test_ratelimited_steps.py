"""Planning steps under shared rate limits (tether.planner.ratelimited), in this process,
against real Redis and a real OpenAI-compatible server reached by the openai client."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.agents import add
from tether import planner
from tether.agent.definition import Agent, register
from tether.agent.tools import tool
from tether.config import Settings
from tether.errors import ModelTransientError
from tether.executor.actions import execute
from tether.insights.stats import compute
from tether.models.fallback import FallbackModel
from tether.models.openai import HAND_BACK_429, OpenAIModel
from tether.models.scripted import ScriptedModel, from_turns, text, tool_call
from tether.planner import ratelimited
from tether.runtime import Runtime
from tether.store import deferred, keys
from tether.store.state import RunStatus
from tether.testing.openai_server import Fault, ScriptedOpenAIServer

_names = itertools.count()


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(from_turns([text("done")]), retry_after_s=2.0) as running:
        yield running


def agent_for(server: ScriptedOpenAIServer) -> Agent:
    model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, timeout_s=5, max_attempts=3)
    return register(Agent(name=f"rl_agent_{next(_names)}", instructions="Answer.", model=model))


def limited_runtime(redis_url: str, server: ScriptedOpenAIServer, window_s: float) -> Runtime:
    limit = {"requests": 1, "window_s": window_s, "burst": 1.0}
    return Runtime(
        Settings(
            redis_url=redis_url,
            model_rate_limits={f"{server.base_url}|gpt-4o-mini": limit},  # type: ignore[dict-item]
        )
    )


def start(rt: Runtime, agent: Agent, name: str) -> str:
    run_id = planner.start(rt, {"event_id": name, "agent": agent.name, "input": "question"})
    assert run_id is not None
    return run_id


def one_ended_one_waiting(
    redis_url: str, server: ScriptedOpenAIServer, name: str
) -> tuple[Runtime, str, str]:
    """Under one request a minute: a run that took the request and ended, and one whose
    step 0 waits in the deferred set for a minute."""
    rt = limited_runtime(redis_url, server, window_s=60.0)
    agent = agent_for(server)
    return rt, start(rt, agent, f"{name}-ended"), start(rt, agent, f"{name}-waiting")


def kinds(rt: Runtime, run_id: str) -> list[str]:
    return [event.kind for _, event in rt.store.log.read(run_id)]


def waits(rt: Runtime, run_id: str) -> list[dict[str, Any]]:
    return [e.data for _, e in rt.store.log.read(run_id) if e.kind == "rate_limited"]


def counted(limit: str) -> float:
    return REGISTRY.get_sample_value("tether_rate_limited_seconds_total", {"limit": limit}) or 0.0


def planned_steps(rt: Runtime) -> list[dict[str, Any]]:
    out = []
    for raw in reversed(rt.store.client.lrange("tether.plan", 0, -1)):
        message = json.loads(raw)
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        if message["headers"]["task"] == "tether.plan.step":
            out.append(kwargs)
    return out


def test_a_step_over_the_limit_is_deferred_counted_once_and_goes_when_due(
    redis_url: str, server: ScriptedOpenAIServer
) -> None:
    rt = limited_runtime(redis_url, server, window_s=3.0)
    agent = agent_for(server)
    first = start(rt, agent, "rl-first")
    assert rt.store.load(first).status == RunStatus.succeeded
    limit = f"model:{server.base_url}|gpt-4o-mini"
    before = counted(limit)

    second = start(rt, agent, "rl-second")
    # No model call and no worker held: the step waits in the deferred set for its slot.
    state = rt.store.load(second)
    assert (state.status, state.step) in ((RunStatus.running, 0), (RunStatus.queued, 0))
    assert "model_call" not in kinds(rt, second)
    assert len(server.requests) == 1
    (due,) = deferred.waiting(rt.store.client, [deferred.step_entry(second, 0)])
    assert due is not None
    (wait,) = waits(rt, second)
    assert wait["limit"] == limit and 1.0 < wait["seconds"] <= 3.0
    assert counted(limit) - before == pytest.approx(wait["seconds"], abs=0.01)
    waited_ms = int(rt.store.client.hget(keys.budget(second), "rate_limited_ms") or 0)
    assert waited_ms == round(wait["seconds"] * 1000)

    # A redelivered step finds its slot: it waits once, counted once (invariant 6).
    planner.plan(rt, second, 0)
    assert len(waits(rt, second)) == 1
    assert counted(limit) - before == pytest.approx(wait["seconds"], abs=0.01)
    assert int(rt.store.client.hget(keys.budget(second), "rate_limited_ms") or 0) == waited_ms
    assert len(server.requests) == 1

    # Waiting for a limit is not stalling: the reconciler publishes nothing for it.
    assert planner.sweep(rt, stalled_after_s=0) == []
    (skipped,) = [e.data for _, e in rt.store.log.read(second) if e.kind == "run_not_redriven"]
    assert "rate limit" in skipped["why"]
    assert rt.store.client.hget(keys.REDRIVES, second) is None

    assert ratelimited.publish_due(rt, due - 0.01) == []  # not before it is due
    time.sleep(max(0.0, due - time.time()) + 0.05)
    now, _ = deferred.peek(rt.store.client)
    assert ratelimited.publish_due(rt, now) == ["step 0"]
    assert {"run_id": second, "step": 0} in planned_steps(rt)
    planner.plan(rt, second, 0)  # the published step, delivered
    assert rt.store.load(second).status == RunStatus.succeeded
    assert len(server.requests) == 2
    # `tether stats` counts the wait once the run has ended (its end commit's rollups).
    stats = compute(rt.store, since=timedelta(hours=1), agent=agent.name)
    assert stats.rate_limited_s == pytest.approx(waited_ms / 1000)


def test_a_429_with_retry_after_pauses_the_endpoint_for_every_step(
    runtime: Runtime, server: ScriptedOpenAIServer
) -> None:
    agent = agent_for(server)
    server.schedule = [Fault.rate_limit]
    asked = time.time()
    first = start(runtime, agent, "rl-429-first")
    # Handed back at once, not retried in the worker: one request reached the server.
    assert len(server.requests) == 1
    state = runtime.store.load(first)
    assert not state.terminal and "model_failed" not in kinds(runtime, first)
    (wait,) = waits(runtime, first)
    assert wait["why"] == "429 Retry-After" and 2.0 <= wait["seconds"] <= 4.05
    pause = runtime.store.client.get(keys.ratelimit(server.base_url, "pause"))
    # Retry-After (2 s) from the 429, which came after `asked` (Redis's clock is this one).
    assert pause is not None and float(pause) >= asked + 2.0 - 0.01

    # The second is held to the pause's end: its wait is what is left of it when it asks
    # (a little later, so that it differs from the whole pause), read against this
    # machine's clock around its start, however long that took.
    time.sleep(0.1)
    before = time.time()
    second = start(runtime, agent, "rl-429-second")
    after = time.time()
    assert len(server.requests) == 1  # the pause holds every run's calls to the endpoint
    (held,) = waits(runtime, second)
    assert held["why"] == "rate limit" and held["until"] == pytest.approx(float(pause))
    assert float(pause) - after - 0.005 <= held["seconds"] <= float(pause) - before + 0.005
    assert runtime.store.budgets.usage(first).steps == 1  # its reservation waits with it


def test_a_step_the_endpoint_keeps_refusing_fails_after_its_pauses(
    redis_url: str, server: ScriptedOpenAIServer
) -> None:
    rt = Runtime(Settings(redis_url=redis_url, model_max_rate_limit_pauses=2))
    agent = agent_for(server)
    server.schedule = [Fault.rate_limit] * 3
    run_id = start(rt, agent, "rl-429-forever")
    for _ in range(2):  # each pause's step, published again when due, meets another 429
        assert not rt.store.load(run_id).terminal
        rt.store.client.delete(keys.ratelimit(server.base_url, "pause"))
        planner.plan(rt, run_id, 0)
    state = rt.store.load(run_id)
    assert state.status == RunStatus.failed and state.error is not None
    assert state.error.category == "model_transient" and "429" in state.error.message
    assert len(server.requests) == 3
    assert [w["why"] for w in waits(rt, run_id)] == ["429 Retry-After"] * 2


def test_the_publisher_sends_only_what_the_committed_state_still_waits_for(
    redis_url: str, server: ScriptedOpenAIServer
) -> None:
    rt, ended, waiting = one_ended_one_waiting(redis_url, server, "rl")
    client = rt.store.client
    client.delete(keys.DEFERRED)
    now, _ = deferred.peek(client)
    for entry in (
        deferred.step_entry(ended, 0),  # ended since
        deferred.action_entry(waiting, "act_gone"),  # no such pending action
        deferred.step_entry(waiting, 3),  # not the step it is at
        deferred.step_entry("run_00000000000000000000", 0),  # no such run
    ):
        deferred.defer(client, entry, now - 1)
    assert ratelimited.publish_due(rt, now) == []
    assert planned_steps(rt) == []
    assert deferred.peek(client)[1] is None  # taken off the set all the same
    deferred.defer(client, deferred.step_entry(waiting, 0), now - 1)
    assert ratelimited.publish_due(rt, now) == ["step 0"]
    assert planned_steps(rt) == [{"run_id": waiting, "step": 0}]

    tooling = register(
        Agent(
            name=f"rl_tools_{next(_names)}",
            instructions="Add.",
            model=ScriptedModel([tool_call("add", {"a": 1, "b": 2}), text("3")]),
            tools=[add],
        )
    )
    (action,) = rt.store.load(start(rt, tooling, "rl-tools")).pending_actions
    client.delete("tether.tools")
    deferred.defer(client, deferred.action_entry(action.run_id, action.action_id), now - 1)
    assert ratelimited.publish_due(rt, now) == [action.action_id]
    assert client.llen("tether.tools") == 1


def test_the_model_hands_a_429_back_only_where_the_planner_asks(
    server: ScriptedOpenAIServer,
) -> None:
    model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, timeout_s=5, max_attempts=3)
    server.retry_after_s = 0.1
    server.schedule = [Fault.rate_limit]
    assert model.complete([], []).content == "done"  # retried in place, as before
    assert len(server.requests) == 2
    server.schedule = [Fault.rate_limit]
    token = HAND_BACK_429.set(True)
    try:
        with pytest.raises(ModelTransientError) as raised:
            model.complete([], [])
    finally:
        HAND_BACK_429.reset(token)
    assert raised.value.retry_after_s == pytest.approx(0.1)
    assert (raised.value.kind, raised.value.attempts, len(server.requests)) == (
        "rate_limited",
        1,
        3,
    )


def test_the_test_server_enforces_requests_and_tokens_per_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    def model_for(s: ScriptedOpenAIServer) -> OpenAIModel:
        return OpenAIModel("m", base_url=s.base_url, timeout_s=5, max_attempts=1)

    def timed_takes(server: ScriptedOpenAIServer) -> list[tuple[float, float]]:
        """Each take of the server's buckets, between two reads of the clock it reads."""
        takes: list[tuple[float, float]] = []
        take = server._limits.take

        def timed(requests: int, tokens: int) -> float | None:
            before = time.monotonic()
            try:
                return take(requests, tokens)
            finally:
                takes.append((before, time.monotonic()))

        monkeypatch.setattr(server._limits, "take", timed)
        return takes

    def retry_after_within(
        retry_after_s: float | None, full_s: float, takes: list[tuple[float, float]]
    ) -> bool:
        # The buckets refill while the calls go: the wait is full_s less the time from the
        # first take to the refused one, however slow the machine. Retry-After has 3 decimals.
        (first_before, first_after), (last_before, last_after) = takes[0], takes[-1]
        return retry_after_s is not None and (
            full_s - (last_after - first_before) - 1e-3
            <= retry_after_s
            <= full_s - (last_before - first_after) + 1e-3
        )

    script = from_turns([text("done")])
    with ScriptedOpenAIServer(script, requests_per_window=2, window_s=1.0) as server:
        model, takes = model_for(server), timed_takes(server)
        model.complete([], [])
        model.complete([], [])
        with pytest.raises(ModelTransientError) as raised:
            model.complete([], [])
        assert raised.value.status == 429 and server.limited == 1
        assert retry_after_within(raised.value.retry_after_s, 0.5, takes), (
            raised.value.retry_after_s,
            takes,
        )
        assert len(server.served) == 2
    with ScriptedOpenAIServer(script) as server:
        used = model_for(server).complete([], []).total_tokens
    # Room for one call and not two.
    with ScriptedOpenAIServer(script, tokens_per_window=2 * used - 1, window_s=60) as server:
        model, takes = model_for(server), timed_takes(server)
        model.complete([], [])
        with pytest.raises(ModelTransientError) as raised:
            model.complete([], [])
        assert raised.value.status == 429 and server.limited == 1
        assert retry_after_within(raised.value.retry_after_s, 60 / (2 * used - 1), takes), (
            raised.value.retry_after_s,
            takes,
        )


def test_which_limit_a_model_call_keeps(redis_url: str) -> None:
    from docs.examples.rate_limited import courier  # the guide's agent

    own = Runtime(Settings(redis_url=redis_url))
    limiter = ratelimited.model_limiter(own, courier)
    assert limiter is not None
    assert limiter.name == "model:https://api.openai.com/v1|gpt-4o-mini"
    assert limiter.limit == courier.model_rate_limit
    # The settings name it, by model name or by endpoint and model: theirs is kept.
    for key in ("gpt-4o-mini", "https://api.openai.com/v1|gpt-4o-mini"):
        configured = Runtime(
            Settings(redis_url=redis_url, model_rate_limits={key: {"requests": 7}})  # type: ignore[dict-item]
        )
        kept = ratelimited.model_limiter(configured, courier)
        assert kept is not None and kept.limit is not None and kept.limit.requests == 7
    # A scripted model with no limit has no endpoint to pause: nothing to keep.
    scripted = Agent(name="rl_scripted", instructions="x", model=ScriptedModel([text("hi")]))
    assert ratelimited.model_limiter(own, scripted) is None


def test_a_fallback_model_hands_the_last_429_back_with_its_retry_after(
    server: ScriptedOpenAIServer,
) -> None:
    def model() -> OpenAIModel:
        return OpenAIModel("gpt-4o-mini", base_url=server.base_url, timeout_s=5, max_attempts=3)

    both = FallbackModel(model(), model(), fallback_on=["rate_limited"])
    server.schedule = [Fault.rate_limit, Fault.rate_limit]
    with ratelimited.handing_back_429(), pytest.raises(ModelTransientError) as raised:
        both.complete([], [])
    assert raised.value.retry_after_s == pytest.approx(2.0)
    assert len(server.requests) == 2  # one each, none retried in place


@tool(rate_limit_per_s=1 / 60)
def slow_api(key: str) -> str:
    """A downstream API that allows one call a minute."""
    return key.upper()


def test_a_redelivered_tool_action_waits_for_its_slot_counted_once(redis_url: str) -> None:
    rt = Runtime(Settings(redis_url=redis_url))
    agent = register(
        Agent(
            name=f"rl_slow_{next(_names)}",
            instructions="Look it up.",
            model=ScriptedModel([tool_call("slow_api", {"key": "a"}), text("A")]),
            tools=[slow_api],
        )
    )
    (first,) = rt.store.load(start(rt, agent, "rl-slow-first")).pending_actions
    (second,) = rt.store.load(start(rt, agent, "rl-slow-second")).pending_actions
    execute(rt, first)  # the minute's one call
    assert rt.store.results.get(first.action_id) is not None
    before = counted("tool:slow_api")

    execute(rt, second)  # over the limit: deferred, not run
    entry = deferred.action_entry(second.run_id, second.action_id)
    (due,) = deferred.waiting(rt.store.client, [entry])
    assert due is not None
    (wait,) = waits(rt, second.run_id)
    assert wait["limit"] == "tool:slow_api" and 50.0 < wait["seconds"] <= 60.0
    waited_ms = int(rt.store.client.hget(keys.budget(second.run_id), "rate_limited_ms") or 0)
    assert waited_ms == round(wait["seconds"] * 1000)

    # Its redelivery finds the same slot: not run, its wait counted once (invariant 6).
    execute(rt, second)
    assert rt.store.results.get(second.action_id) is None
    assert deferred.waiting(rt.store.client, [entry]) == [due]
    assert len(waits(rt, second.run_id)) == 1
    assert counted("tool:slow_api") - before == pytest.approx(wait["seconds"], abs=0.01)
    assert int(rt.store.client.hget(keys.budget(second.run_id), "rate_limited_ms") or 0) == (
        waited_ms
    )
