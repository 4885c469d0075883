"""The small parts failure handling is built from: fallback, retry policies, leases,
dead letters, rejections, policies and the fault-injecting endpoint."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import openai
import pytest

from tether.agent.definition import Agent
from tether.agent.tools import NO_UNSAFE_RETRY, RetryPolicy, tool
from tether.errors import ModelError, TransientToolError
from tether.models import FallbackModel, ModelResponse, OpenAIModel, ScriptedModel, from_turns, text
from tether.runtime import Runtime
from tether.store.leases import Lease
from tether.store.state import ChatMessage, RunState
from tether.testing.openai_server import Fault, ScriptedOpenAIServer
from tether.transport.wire import ErrorCategory, ToolAction
from tether.worker import deadletters

USER = [ChatMessage(role="user", content="hi")]


class Failing:
    name = "failing"
    system = "failing"
    billed_models = ()

    def __init__(self) -> None:
        self.calls = 0

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return 10

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse:
        self.calls += 1
        raise ModelError("endpoint down", attempts=3)


def test_fallback_answers_when_the_primary_fails_and_counts_every_attempt() -> None:
    primary = Failing()
    model = FallbackModel(primary, ScriptedModel([text("from the fallback")], label="b"))
    response = model.complete(USER, [])
    assert response.content == "from the fallback"
    assert response.model == "scripted:b"
    assert response.attempts == 4
    assert model.name == "fallback(failing, scripted:b)"


def test_fallback_fails_with_every_reason_when_all_fail() -> None:
    model = FallbackModel(Failing(), Failing())
    with pytest.raises(ModelError, match="every model failed: failing: endpoint down") as info:
        model.complete(USER, [])
    assert info.value.attempts == 6


def test_fallback_needs_a_fallback() -> None:
    with pytest.raises(ValueError, match="at least one fallback"):
        FallbackModel(Failing())


def test_model_retries_stop_at_the_run_deadline() -> None:
    with ScriptedOpenAIServer(
        from_turns([text("ok")]), schedule=[Fault.server_error] * 10
    ) as server:
        model = OpenAIModel("gpt-4o-mini", base_url=server.base_url, max_attempts=10)
        started = time.monotonic()
        with pytest.raises(ModelError) as info:
            model.complete(USER, [], deadline=time.time() + 0.3)
    assert time.monotonic() - started < 3
    assert info.value.attempts < 10


def test_retry_policy_defaults_follow_idempotence() -> None:
    @tool
    def read(key: str) -> str:
        return key

    @tool(idempotent=False)
    def write(key: str) -> str:
        return key

    @tool(idempotent=False, retry=RetryPolicy(max_attempts=5, retry_on=(TransientToolError,)))
    def careful_write(key: str) -> str:
        return key

    assert read.retry == RetryPolicy()
    assert ConnectionError in read.retry.retry_on
    assert write.retry == NO_UNSAFE_RETRY
    assert write.retry.retry_on == (TransientToolError,)
    assert careful_write.retry.max_attempts == 5


def test_lease_is_exclusive_renewed_and_lapses_when_its_holder_stops(runtime: Runtime) -> None:
    client = runtime.store.client
    first = Lease(client, "tether:test:lease", ttl_s=0.6)
    assert first.acquire()
    assert not Lease(client, "tether:test:lease", ttl_s=0.6).acquire()
    time.sleep(1.0)  # past the ttl: the renewer kept it alive
    assert not Lease(client, "tether:test:lease", ttl_s=0.6).acquire()
    first.stop_renewing()  # the holder "dies": renewals stop
    # It lapses a ttl after its last renewal, which may still have been on its way (a
    # loaded machine may land it late): wait for that, not for a fixed time.
    deadline = time.monotonic() + 5
    while client.exists("tether:test:lease"):
        assert time.monotonic() < deadline, "the lease did not lapse once its renewals stopped"
        time.sleep(0.05)
    second = Lease(client, "tether:test:lease", ttl_s=0.6)
    assert second.acquire()
    second.release()
    first.release()  # releasing a lapsed lease is harmless
    assert client.get("tether:test:lease") is None


def test_dead_letters_record_list_show_and_replay(runtime: Runtime) -> None:
    kwargs = {"observation": {"run_id": "run_x", "bogus": True}}
    entry_id = deadletters.record(
        runtime, "tether.plan.observe", kwargs, "ValueError: broken", ErrorCategory.internal
    )
    (letter,) = deadletters.list_dead(runtime)
    assert letter.id == entry_id and letter.run_id == "run_x"
    assert letter.kwargs == kwargs and letter.reason == "ValueError: broken"
    assert [e.kind for _, e in runtime.store.log.read("run_x")] == ["dead_letter"]

    replayed = deadletters.replay(runtime, entry_id)
    assert replayed is not None
    assert deadletters.get(runtime, entry_id) is None
    (raw,) = runtime.store.client.lrange("tether.plan", 0, -1)
    assert json.loads(raw)["headers"]["task"] == "tether.plan.observe"
    assert deadletters.replay(runtime, entry_id) is None


def test_rejections_are_found_by_event_id(runtime: Runtime) -> None:
    runtime.store.rejections.record(
        "malformed TaskEvent: input: Field required", {"event_id": "e1", "agent": "a"}
    )
    runtime.store.rejections.record("not JSON at all", "garbage")
    assert runtime.store.rejections.reason("e1") == "malformed TaskEvent: input: Field required"
    assert runtime.store.rejections.reason("e2") is None
    assert [r["reason"] for r in runtime.store.rejections.recent()] == [
        "not JSON at all",
        "malformed TaskEvent: input: Field required",
    ]


def test_policies_refuse_with_a_reason() -> None:
    @tool
    def transfer(cents: int) -> str:
        return "ok"

    def small_only(action: ToolAction, state: RunState) -> str | None:
        return "over 100 dollars needs a ticket" if action.arguments["cents"] > 10_000 else None

    agent = Agent(
        name="bank",
        instructions="",
        model=ScriptedModel([]),
        tools=[transfer],
        policies=[small_only],
    )
    state = RunState(run_id="r", event_id="e", agent="bank", goal="g")

    def action(cents: int) -> ToolAction:
        return ToolAction(
            action_id="a",
            run_id="r",
            agent="bank",
            step=0,
            tool="transfer",
            tool_call_id="c",
            arguments={"cents": cents},
        )

    assert agent.check_policies(action(500), state) is None
    assert agent.check_policies(action(50_000), state) == (
        "policy refused 'transfer': over 100 dollars needs a ticket"
    )


def test_fault_server_follows_its_schedule_then_its_seeded_chance() -> None:
    script = from_turns([text("ok")] * 100)
    with ScriptedOpenAIServer(script, schedule=[Fault.rate_limit, None], retry_after_s=0) as server:
        raw = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            raw.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert info.value.response.headers["retry-after"] == "0"
        ok = raw.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert ok.choices[0].message.content == "ok"
        assert server.injected == [Fault.rate_limit]

    def draws(seed: int) -> list[Fault | None]:
        server = ScriptedOpenAIServer(script, fault_rate=0.5, seed=seed)
        try:
            return [server.next_fault() for _ in range(20)]
        finally:
            server.stop()

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
    assert any(f is None for f in draws(3)) and any(f is not None for f in draws(3))


def test_lease_renewer_survives_concurrent_holders(runtime: Runtime) -> None:
    won = []

    def contend() -> None:
        lease = Lease(runtime.store.client, "tether:test:race", ttl_s=2)
        if lease.acquire():
            won.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    won[0].release()


def test_one_renewer_keeps_leases_of_different_ttls_and_pipelined_ones(runtime: Runtime) -> None:
    client = runtime.store.client
    long = Lease(client, "tether:test:long", ttl_s=30)
    assert long.acquire()
    short = Lease(client, "tether:test:short", ttl_s=0.6)
    pipe = client.pipeline()
    short.add_acquire(pipe)
    assert short.acquired(pipe.execute()[0])
    time.sleep(1.2)  # twice the short ttl: renewed although the renewer slept for the long one
    assert not Lease(client, "tether:test:short", ttl_s=0.6).acquire()
    short.release(runtime.store.batch)  # outside a task: released at once
    long.release()
    assert client.get("tether:test:short") is None and client.get("tether:test:long") is None
