"""Checking a finished run against a scenario's expectations, each with the reason it failed."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field

from tether.store.state import RunState

from .judge import Judge, JudgeError
from .report import ExpectationResult
from .scenario import Expectations, ResultExpectation, ToolExpectation


class ExecutedCall(BaseModel):
    """A tool call the executor ran (one per action, from the run's event log)."""

    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    ok: bool = True


class RunFacts(BaseModel):
    """What the expectations look at: the run's final state, its tool calls, its cost."""

    state: RunState
    calls: list[ExecutedCall]
    cost_usd: float


def _ok(name: str) -> ExpectationResult:
    return ExpectationResult(expectation=name, status="passed")


def _fail(name: str, reason: str) -> ExpectationResult:
    return ExpectationResult(expectation=name, status="failed", reason=reason)


def _called(expected: ToolExpectation, facts: RunFacts) -> ExpectationResult:
    name = f"called {expected.describe()}"
    same_tool = [c for c in facts.calls if c.tool == expected.tool]
    matching = [c for c in same_tool if expected.matches(c.arguments)]
    if len(matching) >= expected.min_times:
        return _ok(name)
    if not same_tool:
        ran = sorted({c.tool for c in facts.calls}) or ["no tools"]
        return _fail(name, f"{expected.tool} was never called; the run called {', '.join(ran)}")
    seen = "; ".join(json.dumps(c.arguments, sort_keys=True) for c in same_tool)
    return _fail(
        name,
        f"{len(matching)} of the wanted {expected.min_times} calls matched; "
        f"{expected.tool} was called with {seen}",
    )


def _not_called(expected: ToolExpectation, facts: RunFacts) -> ExpectationResult:
    name = f"never called {expected.describe()}"
    matching = [c for c in facts.calls if c.tool == expected.tool and expected.matches(c.arguments)]
    if not matching:
        return _ok(name)
    seen = "; ".join(json.dumps(c.arguments, sort_keys=True) for c in matching)
    return _fail(name, f"{expected.tool} ran {len(matching)} time(s), with {seen}")


def answer_of(state: RunState) -> str:
    return state.result if state.result is not None else state.partial_result or ""


def _result(expected: ResultExpectation, facts: RunFacts) -> list[ExpectationResult]:
    answer = answer_of(facts.state)
    fold = (lambda s: s) if expected.case_sensitive else str.casefold
    shown = json.dumps(answer[:200])
    out: list[ExpectationResult] = []
    for needle in expected.contains:
        name = f"result contains {needle!r}"
        out.append(
            _ok(name) if fold(needle) in fold(answer) else _fail(name, f"the result was {shown}")
        )
    for needle in expected.not_contains:
        name = f"result does not contain {needle!r}"
        out.append(
            _fail(name, f"the result was {shown}") if fold(needle) in fold(answer) else _ok(name)
        )
    if expected.regex is not None:
        name = f"result matches /{expected.regex}/"
        flags = 0 if expected.case_sensitive else re.IGNORECASE
        found = re.search(expected.regex, answer, flags) is not None
        out.append(_ok(name) if found else _fail(name, f"the result was {shown}"))
    if expected.equals is not None:
        name = f"result equals {expected.equals!r}"
        same = fold(answer.strip()) == fold(expected.equals.strip())
        out.append(_ok(name) if same else _fail(name, f"the result was {shown}"))
    return out


def check(
    expect: Expectations, facts: RunFacts, *, judge: Judge | None = None
) -> list[ExpectationResult]:
    """Every expectation's outcome; a judge expectation is skipped when no judge is configured."""
    state = facts.state
    results: list[ExpectationResult] = []
    if expect.status is not None:
        name = f"status {expect.status}"
        why = f"the run ended {state.status}" + (f": {state.error.message}" if state.error else "")
        results.append(_ok(name) if state.status == expect.status else _fail(name, why))
    results += [_called(e, facts) for e in expect.tools_called]
    results += [_not_called(e, facts) for e in expect.tools_not_called]
    if expect.result is not None:
        results += _result(expect.result, facts)
    if expect.max_steps is not None:
        name = f"at most {expect.max_steps} steps"
        results.append(
            _ok(name)
            if state.step <= expect.max_steps
            else _fail(name, f"the run took {state.step} steps")
        )
    if expect.max_cost_usd is not None:
        name = f"at most ${expect.max_cost_usd:g}"
        results.append(
            _ok(name)
            if facts.cost_usd <= expect.max_cost_usd
            else _fail(name, f"the run cost ${facts.cost_usd:.6f}")
        )
    if expect.judge is not None:
        name = f"judge: {expect.judge.rubric[:60]}"
        if judge is None:
            results.append(
                ExpectationResult(
                    expectation=name,
                    status="skipped",
                    reason="no judge configured (set TETHER_JUDGE_BASE_URL and TETHER_JUDGE_MODEL)",
                )
            )
        else:
            try:
                verdict = judge.grade(
                    expect.judge.rubric, state.goal, answer_of(state), scale=expect.judge.scale
                )
            except JudgeError as exc:
                results.append(_fail(name, str(exc)))
            else:
                summary = f"score {verdict.score:g} (threshold {expect.judge.threshold:g}): {verdict.rationale}"
                results.append(
                    ExpectationResult(
                        expectation=name,
                        status="passed" if verdict.score >= expect.judge.threshold else "failed",
                        reason=summary,
                    )
                )
    return results
