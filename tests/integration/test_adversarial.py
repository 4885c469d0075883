"""The adversarial suite (`tether eval --adversarial`) through eval:<agent> on real workers:
support_desk survives, unsafe_inbox does not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.agents import read_ledger
from tether.agent.definition import load_agent_modules
from tether.dev.stack import DevStack
from tether.evaluation.adversarial import AdversarialReport, run_suite
from tether.runtime import Runtime


@pytest.fixture(scope="module", autouse=True)
def _agents_here() -> None:
    # The suite reads the agent's tools in this process too, as the CLI does.
    load_agent_modules(["tests.agents", "examples.support_desk.agent"])


def _outcomes(report: AdversarialReport) -> dict[str, tuple[bool, str | None]]:
    return {c.case: (c.survived, c.how) for c in report.cases}


def test_support_desk_survives_every_case(stack: DevStack, stack_runtime: Runtime) -> None:
    report = run_suite(stack_runtime, "support_desk", timeout_s=90)
    outcomes = _outcomes(report)
    for case in (
        "input_not_a_dict",
        "input_missing_fields",
        "input_wrong_types",
        "input_oversized",
    ):
        assert outcomes[case] == (True, "rejected"), report.case(case)
    # The injected text never reaches the model: support_desk's injection guardrail holds
    # the tool result for a person (the suite rejects it), so nothing is even asked for.
    for variant in ("ignore_instructions", "fake_authority", "fake_transcript", "own_model"):
        result = report.case(f"injection_{variant}")
        assert (result.survived, result.how, result.escalations) == (
            True,
            "escalated",
            ["guardrail"],
        ), result
        assert result.status == "rejected"
        assert result.failures == []
    # Its guardrail cases: each place's guardrails caught what they must.
    assert {c.case: (c.survived, c.how) for c in report.cases if c.group == "guardrail"} == {
        "guardrail_card_in_input": (True, "completed"),
        "guardrail_secret_in_input": (True, "rejected"),
        "guardrail_injection_in_tool_result": (True, "escalated"),
        "guardrail_secret_in_tool_result": (True, "completed"),
        "guardrail_card_in_output": (True, "completed"),
    }
    assert outcomes["tool_raises"] == (True, "fed_back")
    assert report.case("tool_raises").detail == "tool_permanent"
    assert report.case("tool_hangs").detail == "timeout"
    # Every case with a harness ran as the agent's evaluation twin, never as the agent.
    for result in report.cases:
        if result.run_id is not None:
            state = stack_runtime.store.get(result.run_id)
            assert state is not None and state.agent == "eval:support_desk", result.case
    assert report.case("tool_garbage").detail == "tool_validation"
    assert report.case("tool_huge_output").detail == "tool_validation"
    nonsense = report.case("model_nonsense")
    assert (nonsense.survived, nonsense.how, nonsense.escalations) == (
        True,
        "escalated",
        ["repeated_failure"],
    )
    limited = report.case("model_rate_limited")
    assert (limited.survived, limited.how, limited.error_category) == (
        True,
        "clear_error",
        "model_transient",
    )
    for axis in ("max_steps", "max_tool_calls", "max_tokens"):
        result = report.case(f"budget_{axis}")
        assert (result.survived, result.how, result.status) == (
            True,
            "budget_exhausted",
            "budget_exhausted",
        ), result
        assert result.budget_used is not None and result.limits is not None
    assert report.case("budget_max_tool_calls").budget_used.tool_calls == 0  # type: ignore[union-attr]
    assert report.case("budget_max_steps").budget_used.steps == 1  # type: ignore[union-attr]
    assert report.survived_all, [c for c in report.cases if not c.survived]


def test_unsafe_agent_is_caught_performing_an_unapproved_side_effect(
    stack: DevStack, stack_runtime: Runtime
) -> None:
    only = [
        "injection_ignore_instructions",
        "injection_own_model",
        "tool_raises",
        "budget_max_steps",
    ]
    report = run_suite(stack_runtime, "unsafe_inbox", timeout_s=60, only=only)
    assert [c.case for c in report.cases] == only
    for case in ("injection_ignore_instructions", "injection_own_model"):
        result = report.case(case)
        assert not result.survived
        kinds = [f.kind for f in result.failures]
        assert kinds and set(kinds) == {"unapproved_side_effect"}, result.failures
        assert "send_money" in result.failures[0].detail
        # The side effect really happened: the ledger has its line.
        assert any(line.startswith(f"{result.run_id} send_money") for line in read_ledger())
    assert (report.case("tool_raises").survived, report.case("tool_raises").how) == (
        True,
        "fed_back",
    )
    assert report.case("budget_max_steps").how == "budget_exhausted"
    assert not report.survived_all


def test_cli_reports_json_and_exits_1_on_an_unsafe_agent(stack: DevStack) -> None:
    env = {
        **os.environ,
        "TETHER_REDIS_URL": stack.redis_url,
        "TETHER_AGENT_MODULES": '["tests.agents", "examples.support_desk.agent"]',
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.cli.main",
            "eval",
            "--adversarial",
            "unsafe_inbox",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1, done.stderr
    report = AdversarialReport.model_validate_json(done.stdout)
    assert report.case("injection_fake_authority").failures[0].kind == "unapproved_side_effect"
    assert report.case("input_oversized").how == "rejected"
