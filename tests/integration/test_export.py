"""A failing run recorded by real workers becomes a scenario that fails until the agent is fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.integration.helpers import wait_status
from tether import client, runtime
from tether.agent.definition import load_agent_modules
from tether.cli.main import app
from tether.evaluation.export import export_run
from tether.evaluation.runner import run_scenarios
from tether.evaluation.scenario import (
    ArgumentMatch,
    Fixture,
    ScriptedCall,
    ScriptedModelSpec,
    load_scenario,
)
from tether.runtime import Runtime


@pytest.fixture(autouse=True, scope="module")
def _agents() -> None:
    load_agent_modules(["tests.agents"])


@pytest.fixture(scope="module")
def failed_run(stack_runtime: Runtime) -> str:
    run_id = client.submit("parts_clerk", "Are A1 and B2 in stock?", runtime=stack_runtime)
    wait_status(stack_runtime, run_id, "budget_exhausted")
    return run_id


def test_export_reproduces_the_run_and_expects_success(
    stack_runtime: Runtime, failed_run: str
) -> None:
    scenario = export_run(stack_runtime, failed_run)

    assert scenario.agent == "parts_clerk"
    assert scenario.event.input == "Are A1 and B2 in stock?"
    assert scenario.event.budget is None  # nothing tighter than the agent's own budget
    assert isinstance(scenario.model, ScriptedModelSpec)
    assert [t.tool_calls for t in scenario.model.turns] == [
        [ScriptedCall(name="lookup_part", arguments={"sku": "A1"}, id="call_2_0")],
        [ScriptedCall(name="lookup_part", arguments={"sku": "B2"}, id="call_4_0")],
    ]
    # Only A1 ran; B2 was refused by the budget, so it has no fixture.
    assert scenario.fixtures == {
        "lookup_part": [
            Fixture(
                when=ArgumentMatch(arguments={"sku": "A1"}, match="exact"),
                result="part A1: in stock",
            )
        ]
    }
    assert scenario.unfixtured_tools == "fail"
    assert scenario.expect.status == "succeeded"
    assert [(c.tool, c.arguments, c.match) for c in scenario.expect.tools_called] == [
        ("lookup_part", {"sku": "A1"}, "exact")
    ]
    assert "ended budget_exhausted" in scenario.description
    assert "max_tool_calls" in scenario.description


def test_cli_writes_a_scenario_that_validates(
    stack_runtime: Runtime, failed_run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "_runtime", stack_runtime)
    path = tmp_path / "regressions" / "parts.yaml"

    result = CliRunner().invoke(app, ["runs", "export", failed_run, "--scenario", str(path)])

    assert result.exit_code == 0, result.output
    assert "2 model turns, 1 tool fixtures, expects succeeded" in result.stdout
    assert load_scenario(path) == export_run(stack_runtime, failed_run)


def test_exported_failure_fails_until_the_agent_is_fixed(
    stack_runtime: Runtime, failed_run: str
) -> None:
    scenario = export_run(stack_runtime, failed_run)

    broken = run_scenarios([scenario], runtime=stack_runtime).scenarios[0]
    assert not broken.passed
    assert broken.trials[0].status == "budget_exhausted"
    assert any("budget_exhausted" in reason for reason in broken.reasons()), broken.reasons()

    # The same agent redeployed with a budget that fits two parts.
    fixed = run_scenarios(
        [scenario.model_copy(update={"agent": "parts_clerk_fixed"})], runtime=stack_runtime
    ).scenarios[0]
    assert fixed.passed, fixed.reasons()
    assert fixed.trials[0].status == "succeeded"
