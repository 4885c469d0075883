"""Scenarios through real workers: the support desk's examples, a failing expectation, a judge."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.dev.stack import DevStack
from tether.evaluation import run_scenarios
from tether.evaluation.judge import Judge
from tether.evaluation.scenario import parse_scenario
from tether.models.scripted import text
from tether.runtime import Runtime
from tether.testing.openai_server import ScriptedOpenAIServer

SCENARIOS = Path(__file__).parents[2] / "examples" / "support_desk" / "scenarios"


def test_support_desk_scenarios_pass_three_trials_each(
    stack: DevStack, stack_runtime: Runtime
) -> None:
    report = run_scenarios([SCENARIOS], trials=3, runtime=stack_runtime, judge=None)
    report.assert_passed()
    assert len(report.scenarios) >= 5
    assert all(s.n == 3 and s.passed_trials == 3 for s in report.scenarios)
    assert report.pass_hat_k == 1.0
    by_name = {s.name: s for s in report.scenarios}
    lookup = by_name["order lookup answered with its tracking number"].trials[0]
    # The real lookup_order tool answered from the example database.
    assert lookup.status == "succeeded" and "1Z999AA10123456784" in (lookup.result or "")
    refund = by_name["refund waits for approval and never issues without it"].trials[0]
    assert refund.status == "waiting_human"
    rejected = by_name["refund rejected by a human ends the run without a refund"].trials[0]
    assert rejected.status == "rejected"
    judged = by_name["delivered order answered politely and correctly (judged)"].trials[0]
    assert [e.status for e in judged.expectations if e.expectation.startswith("judge")] == [
        "skipped"
    ]
    # Evaluation runs end: nothing waits for a human afterwards.
    state = stack_runtime.store.get(refund.run_id)
    assert state is not None and state.status == "cancelled"


def test_a_failing_expectation_fails_with_its_reason(
    stack: DevStack, stack_runtime: Runtime
) -> None:
    scenario = parse_scenario(
        {
            "name": "fixture answers, expectations disagree",
            "agent": "support_desk",
            "event": {"input": "Where is order 1003?"},
            "model": {
                "turns": [
                    {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": 1003}}]},
                    {"text": "Order 1003 is out for delivery."},
                ]
            },
            "fixtures": {
                "lookup_order": [
                    {
                        "when": {"arguments": {"order_id": 1003}},
                        "result": {
                            "order_id": 1003,
                            "customer_id": 2,
                            "item": "Camping stove",
                            "amount_cents": 5400,
                            "status": "out for delivery",
                            "tracking": None,
                        },
                    }
                ]
            },
            "unfixtured_tools": "fail",
            "expect": {
                "status": "succeeded",
                "tools_called": [
                    {"tool": "lookup_order", "arguments": {"order_id": "100[12]"}, "match": "regex"}
                ],
                "result": {"contains": ["out for delivery"]},
                "max_steps": 1,
            },
        }
    )
    report = run_scenarios([scenario], trials=3, runtime=stack_runtime, judge=None)
    (result,) = report.scenarios
    assert (result.passed, result.passed_trials, result.n) == (False, 0, 3)
    assert report.pass_at_k == 0.0
    trial = result.trials[0]
    assert trial.status == "succeeded"
    failed = {e.expectation: e.reason for e in trial.failures}
    assert failed == {
        'called lookup_order(arguments regex {"order_id": "100[12]"})': (
            'lookup_order was called with {"order_id": 1003}'.join(
                ["0 of the wanted 1 calls matched; ", ""]
            )
        ),
        "at most 1 steps": "the run took 2 steps",
    }
    # The fixture's result reached the model through the real executor.
    trace = [e for _, e in stack_runtime.store.log.read(trial.run_id) if e.kind == "tool_call"]
    assert trace[0].data["output"]["status"] == "out for delivery"
    with pytest.raises(AssertionError, match="at most 1 steps: the run took 2 steps"):
        report.assert_passed()


def test_a_judge_expectation_graded_by_a_local_judge(
    stack: DevStack, stack_runtime: Runtime
) -> None:
    server = ScriptedOpenAIServer(
        lambda messages: text('{"score": 0.8, "rationale": "Delivered, with tracking."}')
    ).start()
    try:
        judge = Judge("judge", base_url=server.base_url, max_retries=0)
        report = run_scenarios(
            [SCENARIOS / "judged_answer.yaml"], trials=1, runtime=stack_runtime, judge=judge
        )
        report.assert_passed()
        (judged,) = [
            e
            for e in report.scenarios[0].trials[0].expectations
            if e.expectation.startswith("judge")
        ]
        assert (judged.status, judged.reason) == (
            "passed",
            "score 0.8 (threshold 0.7): Delivered, with tracking.",
        )
        assert "3941203312" in server.requests[0]["messages"][-1]["content"]
    finally:
        server.stop()
