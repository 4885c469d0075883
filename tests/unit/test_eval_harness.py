"""The one evaluation mechanism: eval:<agent> with a stored harness document.

Production pays nothing for it (no eval key is read on a production action's
round trip), intake refuses an eval: event without its document, and the
document's faults wrap the real tools as the adversarial suite needs.
"""

from __future__ import annotations

import importlib
import inspect
import time
from typing import Any

import pytest
import redis
from pydantic import ValidationError
from redis.client import Pipeline

from tether import planner
from tether.agent.definition import get_agent, load_agent_modules
from tether.agent.tools import ToolContext
from tether.errors import ToolTimeoutError
from tether.evaluation import harness
from tether.evaluation.scenario import Scenario, ScenarioEvent, ToolFault
from tether.executor import actions as executor
from tether.planner import step
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.store.state import RunStatus


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.agents"])


def _event(agent: str, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "agent": agent, "input": "What is 2 + 3?"}


def test_production_code_has_no_evaluation_hook() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("tether.evaluation.overrides")
    for module in (executor, step):
        source = inspect.getsource(module)
        assert "overrides" not in source, module.__name__
        assert "eval" not in {name.split(".")[-1] for name in vars(module)}, module.__name__
        assert ":eval" not in source and "eval_scenario" not in source, module.__name__


def test_a_production_action_round_trip_reads_no_eval_key(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = planner.start(runtime, _event("calculator", "evt-prod"))
    assert run_id is not None
    (action,) = runtime.store.load(run_id).pending_actions
    touched: list[str] = []

    def record(args: tuple[Any, ...]) -> None:
        touched.extend(a.decode() if isinstance(a, bytes) else str(a) for a in args)

    plain = redis.Redis.execute_command
    piped = Pipeline.pipeline_execute_command

    def execute_command(self: Any, *args: Any, **options: Any) -> Any:
        record(args)
        return plain(self, *args, **options)

    def pipeline_execute_command(self: Any, *args: Any, **options: Any) -> Any:
        record(args)
        return piped(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    monkeypatch.setattr(Pipeline, "pipeline_execute_command", pipeline_execute_command)
    executor.execute(runtime, action)
    monkeypatch.undo()
    assert touched, "the recorder saw no command"
    assert not [t for t in touched if ":eval:" in t]
    outcome = [e for _, e in runtime.store.log.read(run_id) if e.kind == "tool_call"]
    assert [e.data.get("ok") for e in outcome] == [True]


def test_intake_rejects_an_eval_event_without_its_harness_document(runtime: Runtime) -> None:
    assert planner.start(runtime, _event("eval:calculator", "evt-no-harness")) is None
    reason = runtime.store.rejections.reason("evt-no-harness")
    assert reason is not None
    assert "is an evaluation run but no harness document is stored" in reason
    assert harness.harness_key(run_id_for("evt-no-harness")) in reason
    assert runtime.store.get(run_id_for("evt-no-harness")) is None


def test_intake_rejects_an_invalid_harness_document(runtime: Runtime) -> None:
    runtime.store.client.set(harness.harness_key(run_id_for("evt-bad")), '{"name": 1}')
    assert planner.start(runtime, _event("eval:calculator", "evt-bad")) is None
    assert "an invalid harness document" in (runtime.store.rejections.reason("evt-bad") or "")


def test_an_eval_event_with_its_harness_plays_the_scenario(runtime: Runtime) -> None:
    scenario = Scenario(
        name="scripted",
        agent="calculator",
        event=ScenarioEvent(input="What is 2 + 3?"),
        model={"turns": [{"tool_calls": [{"name": "add", "arguments": {"a": 40, "b": 2}}]}]},  # type: ignore[arg-type]
    )
    harness.save_scenario(runtime, run_id_for("evt-harnessed"), scenario)
    run_id = planner.start(runtime, _event("eval:calculator", "evt-harnessed"))
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert (state.agent, state.status) == ("eval:calculator", RunStatus.waiting_tools)
    assert state.agent_version == get_agent("calculator").version
    assert state.pending_actions[0].arguments == {"a": 40, "b": 2}


def _call(runtime: Runtime, run_id: str, faults: list[ToolFault], **arguments: Any) -> Any:
    scenario = Scenario(
        name="faults", agent="calculator", event=ScenarioEvent(input="x"), faults=faults
    )
    harness.save_scenario(runtime, run_id, scenario)
    harness.scenario_of(run_id, runtime.store.client)
    tool = get_agent("eval:calculator").tool("add")
    context = ToolContext(run_id=run_id, action_id=f"{run_id}:0:0", agent="eval:calculator", step=0)
    return tool.invoke(arguments, context)


def test_faults_wrap_the_real_tool(runtime: Runtime) -> None:
    assert _call(runtime, "run_none", [], a=2, b=3) == 5
    assert _call(runtime, "run_other", [ToolFault(tool="other", kind="raise")], a=2, b=3) == 5
    with pytest.raises(harness.ToolFixtureError, match="backend failed"):
        _call(runtime, "run_raise", [ToolFault(kind="raise")], a=2, b=3)
    # The tool's own output validation still applies to what a fault returns.
    with pytest.raises(ValidationError, match="valid integer"):
        _call(runtime, "run_huge", [ToolFault(kind="huge", size=10)], a=2, b=3)
    started = time.monotonic()
    # The wrapper's own short timeout, not the tool's 30 s: the executor's timeout error.
    with pytest.raises(ToolTimeoutError, match=r"within 0\.2s"):
        _call(runtime, "run_hang", [ToolFault(kind="hang", timeout_s=0.2)], a=2, b=3)
    assert time.monotonic() - started < 2


def test_inject_appends_to_the_real_output() -> None:
    from pydantic import BaseModel

    class Order(BaseModel):
        order_id: int
        item: str

    injected = harness.inject(Order(order_id=1, item="tent"), "CALL x ARGS {} END")
    assert injected == Order(order_id=1, item="tent\nCALL x ARGS {} END")
    assert harness.inject([{"a": 1, "b": "s"}], "!") == [{"a": 1, "b": "s\n!"}]
    assert harness.inject(5, "!") == 5
