"""Scenario files, matchers, pass^k math and the LLM judge (against the local OpenAI-compatible server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.evaluation.expectations import ExecutedCall, RunFacts, check
from tether.evaluation.judge import Judge, JudgeError
from tether.evaluation.report import EvalReport, ScenarioReport, TrialResult, pass_at_k, pass_hat_k
from tether.evaluation.scenario import (
    ArgumentMatch,
    Expectations,
    ScenarioFileError,
    dump_scenario,
    load_scenario,
    parse_scenario,
)
from tether.models.scripted import text
from tether.store.state import RunState, RunStatus
from tether.testing.openai_server import ScriptedOpenAIServer

SCENARIOS = Path(__file__).parents[2] / "examples" / "support_desk" / "scenarios"


def test_every_example_scenario_loads_and_round_trips() -> None:
    paths = sorted(SCENARIOS.glob("*.yaml"))
    assert len(paths) >= 4
    for path in paths:
        scenario = load_scenario(path)
        assert parse_scenario(__import__("yaml").safe_load(dump_scenario(scenario))) == scenario


def test_invalid_scenario_names_the_field_and_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nagent: support_desk\nevent: {input: hi}\n"
        "model: {turns: [{text: a, tool_calls: [{name: t}]}]}\n"
        "expect: {stauts: succeeded}\n"
    )
    with pytest.raises(ScenarioFileError) as info:
        load_scenario(bad)
    message = str(info.value)
    assert str(bad) in message
    assert "expect.stauts: Extra inputs are not permitted" in message
    assert "either `text` or a non-empty `tool_calls`" in message


def test_fixture_needs_exactly_one_of_result_or_error() -> None:
    base = {"name": "x", "agent": "a", "event": {"input": "hi"}}
    with pytest.raises(ScenarioFileError, match="it has neither"):
        parse_scenario(base | {"fixtures": {"t": [{"when": {"arguments": {}}}]}})
    with pytest.raises(ScenarioFileError, match="not both"):
        parse_scenario(base | {"fixtures": {"t": [{"result": 1, "error": "boom"}]}})
    # An explicit null result is a result.
    scenario = parse_scenario(base | {"fixtures": {"t": [{"result": None}]}})
    assert scenario.fixture_for("t", {}) is not None
    with pytest.raises(ScenarioFileError, match="does not compile"):
        parse_scenario(base | {"expect": {"result": {"regex": "("}}})
    with pytest.raises(ScenarioFileError, match="outside the 1-5 scale"):
        parse_scenario(
            base | {"expect": {"judge": {"rubric": "r", "scale": "1-5", "threshold": 0.5}}}
        )


def test_argument_matchers() -> None:
    actual = {"order_id": 1001, "reason": "jacket leaks"}
    assert ArgumentMatch(arguments={"order_id": 1001}).matches(actual)
    assert not ArgumentMatch(arguments={"order_id": 1002}).matches(actual)
    assert not ArgumentMatch(arguments={"order_id": 1001}, match="exact").matches(actual)
    assert ArgumentMatch(arguments=actual, match="exact").matches(dict(actual))
    assert ArgumentMatch(
        arguments={"order_id": "10\\d\\d", "reason": ".*leak.*"}, match="regex"
    ).matches(actual)
    # fullmatch: a pattern matching part of the value does not match.
    assert not ArgumentMatch(arguments={"order_id": "10"}, match="regex").matches(actual)
    assert not ArgumentMatch(arguments={"missing": ".*"}, match="regex").matches(actual)
    with pytest.raises(ValueError, match="must be a string pattern"):
        ArgumentMatch(arguments={"order_id": 1}, match="regex")


def test_fixture_for_picks_the_first_matching_fixture() -> None:
    scenario = parse_scenario(
        {
            "name": "x",
            "agent": "a",
            "event": {"input": "hi"},
            "fixtures": {
                "lookup": [
                    {"when": {"arguments": {"id": 1}}, "result": "one"},
                    {"error": "anything else fails"},
                ]
            },
        }
    )
    assert scenario.fixture_for("lookup", {"id": 1}).result == "one"  # type: ignore[union-attr]
    assert scenario.fixture_for("lookup", {"id": 2}).error == "anything else fails"  # type: ignore[union-attr]
    assert scenario.fixture_for("other", {}) is None


def test_pass_hat_k_and_pass_at_k() -> None:
    assert pass_hat_k(3, 3, 3) == 1.0
    assert pass_hat_k(3, 2, 3) == 0.0
    assert pass_at_k(3, 1, 3) == 1.0
    assert pass_at_k(3, 0, 3) == 0.0
    # 4 of 5 passed: 2 drawn both pass in C(4,2)/C(5,2) = 6/10 of draws.
    assert pass_hat_k(5, 4, 2) == pytest.approx(0.6)
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - 6 / 10)
    with pytest.raises(ValueError, match="k"):
        pass_hat_k(2, 1, 3)


def _trial(n: int, passed: bool) -> TrialResult:
    return TrialResult(trial=n, run_id=f"r{n}", status="succeeded", passed=passed)


def test_report_pass_hat_k_and_assert_passed() -> None:
    flaky = ScenarioReport(
        name="flaky",
        path="f",
        agent="a",
        trials=[_trial(1, True), _trial(2, False), _trial(3, True)],
    )
    solid = ScenarioReport(
        name="solid", path="s", agent="a", trials=[_trial(i, True) for i in (1, 2, 3)]
    )
    report = EvalReport(k=3, scenarios=[flaky, solid])
    assert (report.pass_hat_k, report.pass_at_k) == (0.5, 1.0)
    assert not report.passed
    summary = report.summary()
    assert [s.passed_trials for s in summary.scenarios] == [2, 3]
    with pytest.raises(
        AssertionError, match=r"1 of 2 scenarios failed:\n  flaky \(2/3 trials passed\)"
    ):
        report.assert_passed()


def _facts(
    result: str, calls: list[ExecutedCall], *, steps: int = 2, cost: float = 0.0
) -> RunFacts:
    state = RunState(
        run_id="run_x",
        event_id="e",
        agent="a",
        goal="Where is 1001?",
        status=RunStatus.succeeded,
        step=steps,
        result=result,
    )
    return RunFacts(state=state, calls=calls, cost_usd=cost)


def test_expectations_report_each_failure_with_its_reason() -> None:
    expect = Expectations.model_validate(
        {
            "status": "failed",
            "tools_called": [{"tool": "lookup_order", "arguments": {"order_id": 1002}}],
            "tools_not_called": [{"tool": "issue_refund"}],
            "result": {"contains": ["tracking"], "equals": "nope"},
            "max_steps": 1,
            "max_cost_usd": 0.001,
        }
    )
    facts = _facts(
        "Your tracking number is X",
        [
            ExecutedCall(tool="lookup_order", arguments={"order_id": 1001}),
            ExecutedCall(tool="issue_refund", arguments={"order_id": 1001, "amount_cents": 5}),
        ],
        steps=3,
        cost=0.5,
    )
    outcomes = {o.expectation: o for o in check(expect, facts)}
    assert outcomes["status failed"].reason == "the run ended succeeded"
    assert "1001" in outcomes['called lookup_order(arguments subset {"order_id": 1002})'].reason
    assert outcomes["never called issue_refund(any arguments)"].reason.startswith(
        "issue_refund ran 1 time(s)"
    )
    assert outcomes["result contains 'tracking'"].status == "passed"
    assert outcomes["result equals 'nope'"].status == "failed"
    assert outcomes["at most 1 steps"].reason == "the run took 3 steps"
    assert outcomes["at most $0.001"].reason == "the run cost $0.500000"


def _judge_server(reply: str) -> ScriptedOpenAIServer:
    return ScriptedOpenAIServer(lambda messages: text(reply)).start()


def test_judge_grades_through_the_openai_client() -> None:
    server = _judge_server('{"score": 0.9, "rationale": "Gives the tracking number."}')
    try:
        judge = Judge("judge-model", base_url=server.base_url, max_retries=0)
        verdict = judge.grade("Gives the tracking number", "Where is 1001?", "Tracking 1Z999")
        assert (verdict.score, verdict.rationale) == (0.9, "Gives the tracking number.")
        request = server.requests[-1]
        assert request["model"] == "judge-model"
        assert request["response_format"]["type"] == "json_schema"
        assert "Tracking 1Z999" in request["messages"][-1]["content"]
        # As a scenario expectation: the threshold decides.
        expect = Expectations.model_validate({"judge": {"rubric": "r", "threshold": 0.95}})
        (outcome,) = check(expect, _facts("Tracking 1Z999", []), judge=judge)
        assert outcome.status == "failed"
        assert outcome.reason == "score 0.9 (threshold 0.95): Gives the tracking number."
        (skipped,) = check(expect, _facts("x", []), judge=None)
        assert skipped.status == "skipped"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("reply", "scale", "message"),
    [
        ("I think it is fine", "0-1", "not a verdict"),
        ('{"score": 0.5}', "0-1", "rationale: Field required"),
        ('{"score": 4, "rationale": "good"}', "0-1", "outside the 0-1 scale"),
    ],
)
def test_judge_rejects_a_malformed_verdict_clearly(reply: str, scale: str, message: str) -> None:
    server = _judge_server(reply)
    try:
        judge = Judge("judge-model", base_url=server.base_url, max_retries=0)
        with pytest.raises(JudgeError, match=message):
            judge.grade("r", "task", "answer", scale=scale)  # type: ignore[arg-type]
    finally:
        server.stop()


def test_judge_from_settings_needs_url_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("TETHER_JUDGE_MODEL", raising=False)
    assert Judge.from_settings() is None
    monkeypatch.setenv("TETHER_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("TETHER_JUDGE_MODEL", "judge")
    judge = Judge.from_settings()
    assert judge is not None and judge.model == "judge"
