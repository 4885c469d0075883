"""Replay: runs recorded by real workers, re-decided by the current agent code in-process."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import redis

from tests.agents import add, read_ledger
from tests.integration.helpers import pending_escalation, wait_status
from tether import client, tool
from tether.agent import definition as agents
from tether.agent.definition import Agent, get_agent, load_agent_modules
from tether.cli.main import app
from tether.evaluation.replay import replay, scratch_url
from tether.runtime import Runtime
from tether.transport.wire import Verdict

SCRATCH_DB = 14


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.agents"])


@pytest.fixture(scope="module")
def calculator_run(stack_runtime: Runtime) -> str:
    run_id = client.submit("calculator", "What is 2 + 3?", runtime=stack_runtime)
    wait_status(stack_runtime, run_id, "succeeded")
    return run_id


@pytest.fixture
def changed(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Swap in a changed copy of an agent under its own name, as a redeploy would."""

    def swap(name: str, **changes: object) -> Agent:
        current = get_agent(name)
        modified = dataclasses.replace(current, version="", **changes)  # type: ignore[arg-type]
        monkeypatch.setitem(agents._loaded, name, modified)
        return modified

    yield swap


def scratch_keys(rt: Runtime) -> list[str]:
    url = scratch_url(rt.settings.redis_url, SCRATCH_DB)
    found = redis.Redis.from_url(url, decode_responses=True).keys("tether:run*")
    return sorted(str(k) for k in found)


def test_unchanged_agent_replays_without_divergence(
    stack_runtime: Runtime, calculator_run: str
) -> None:
    report = replay(stack_runtime, calculator_run, scratch_db=SCRATCH_DB)

    assert report.divergence is None and not report.diverged
    assert report.recorded_status == report.replayed_status == "succeeded"
    # tool_calls at step 0, final_answer at step 1, run_finished.
    assert report.decision_points == 3
    assert report.recorded_version == report.current_version == get_agent("calculator").version
    assert report.notes == []
    # The replay left nothing of itself in the scratch database.
    assert scratch_keys(stack_runtime) == []


def test_tool_now_requiring_approval_diverges_at_its_step(
    stack_runtime: Runtime, calculator_run: str, changed: object
) -> None:
    guarded_add = dataclasses.replace(add, requires_approval=True)
    changed("calculator", tools=[guarded_add])  # type: ignore[operator]

    report = replay(stack_runtime, calculator_run, scratch_db=SCRATCH_DB)

    divergence = report.divergence
    assert divergence is not None
    assert divergence.step == 0
    assert divergence.what == "add now requires human approval"
    assert divergence.recorded is not None and divergence.replayed is not None
    assert divergence.recorded.describe() == 'calls add({"a": 2, "b": 3})'
    assert divergence.replayed.describe() == 'calls add({"a": 2, "b": 3}) [approval required]'
    # Nobody approved it in the recording: the replay ends waiting for a human.
    assert report.replayed_status is None
    assert any("never decided in the recording" in note for note in report.notes)


def test_policy_now_denying_diverges_with_both_sides(
    stack_runtime: Runtime, calculator_run: str, changed: object
) -> None:
    changed(  # type: ignore[operator]
        "calculator", policies=[lambda action, state: "no sums above 4 today"]
    )

    report = replay(stack_runtime, calculator_run, scratch_db=SCRATCH_DB)

    divergence = report.divergence
    assert divergence is not None and divergence.step == 0
    assert divergence.what == (
        "a policy now denies what the recorded run did: policy refused 'add': no sums above 4 today"
    )
    assert divergence.recorded is not None and divergence.recorded.kind == "decision"
    assert divergence.replayed is not None and divergence.replayed.kind == "tool_call_denied"


def test_changed_tool_schema_refuses_the_recorded_call(
    stack_runtime: Runtime, calculator_run: str, changed: object
) -> None:
    @tool
    def add(x: int, y: int) -> int:  # renamed parameters: the recorded {"a", "b"} no longer fit
        """Add two integers."""
        return x + y

    changed("calculator", tools=[add])  # type: ignore[operator]

    report = replay(stack_runtime, calculator_run, scratch_db=SCRATCH_DB)

    divergence = report.divergence
    assert divergence is not None and divergence.step == 0
    assert divergence.what.startswith(
        "the current tool schema refuses the recorded call: arguments for tool 'add' failed "
        "validation: x: Field required"
    )
    assert report.current_version != report.recorded_version
    # The refusal went back to the model, so its next (recorded) answer saw a tool error.
    assert "step 1: the model now sees different messages from message 3 (tool)" in " ".join(
        report.notes
    )


def test_recorded_approval_is_replayed_and_the_tool_never_runs(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("payer", "Pay acme 5 dollars", runtime=rt)
    record = pending_escalation(rt, run_id)
    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=rt)
    wait_status(rt, run_id, "succeeded")
    ledger = read_ledger()
    assert ledger.count(f"{run_id} acme 500") == 1

    report = replay(rt, run_id, scratch_db=SCRATCH_DB)

    assert report.divergence is None, report.divergence
    assert report.replayed_status == "succeeded"
    # tool_calls (approval required), the escalation, final_answer, run_finished.
    assert report.decision_points == 4
    assert read_ledger() == ledger  # dry run: the payment was served from the recording


def test_cli_prints_the_divergence_as_json(
    stack_runtime: Runtime,
    calculator_run: str,
    changed: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from tether import runtime

    monkeypatch.setattr(runtime, "_runtime", stack_runtime)
    guarded_add = dataclasses.replace(add, requires_approval=True)
    changed("calculator", tools=[guarded_add])  # type: ignore[operator]

    result = CliRunner().invoke(
        app, ["replay", calculator_run, "--json", "--scratch-db", str(SCRATCH_DB)]
    )

    assert result.exit_code == 1, result.output
    shown = json.loads(result.stdout)
    assert shown["diverged"] is True
    assert shown["divergence"]["step"] == 0
    assert shown["divergence"]["what"] == "add now requires human approval"


def test_unknown_run_and_own_database_are_refused(stack_runtime: Runtime) -> None:
    from tether.errors import ConfigError, UnknownRunError

    with pytest.raises(UnknownRunError):
        replay(stack_runtime, "run_nothing_here", scratch_db=SCRATCH_DB)
    with pytest.raises(ConfigError, match="scratch database 0 is the run store's own"):
        scratch_url("redis://127.0.0.1:6390/0", 0)
