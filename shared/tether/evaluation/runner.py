"""Running scenarios k times each through the real services, and judging what they did."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tether import client
from tether.runtime import Runtime, get_runtime
from tether.store.runs import run_id_for
from tether.store.state import RunState, RunStatus
from tether.transport.wire import EventKind, Verdict

from .escalations import decide_waiting
from .expectations import ExecutedCall, RunFacts, answer_of, check
from .harness import eval_agent_name, save_scenario
from .judge import Judge
from .report import EvalReport, ScenarioReport, TrialResult
from .scenario import Scenario, ScenarioFileError, load_scenario, scenario_paths

DECIDED_BY = "tether-eval"
# Trials run at once: each mostly waits on the workers.
PARALLEL_TRIALS = 8


def _settle(rt: Runtime, scenario: Scenario, run_id: str, event_id: str) -> RunState | str:
    """Wait for the run to end (or to wait for a human, when the scenario stops there).

    Decides the run's escalations as the scenario says; returns the final state,
    or why there is none.
    """
    deadline = time.monotonic() + scenario.timeout_s
    decided: set[str] = set()
    state: RunState | None = None
    while time.monotonic() < deadline:
        state = rt.store.get(run_id)
        if state is None:
            reason = client.rejection(event_id, runtime=rt)
            if reason is not None:
                return f"the event was rejected: {reason}"
        elif state.terminal:
            return state
        elif state.status == RunStatus.waiting_human:
            if scenario.on_escalation == "stop":
                return state
            verdict = Verdict.approve if scenario.on_escalation == "approve" else Verdict.reject
            now = decide_waiting(
                rt,
                state,
                verdict,
                by=DECIDED_BY,
                reason=f"scenario {scenario.name!r}: on_escalation {scenario.on_escalation}",
                decided=decided,
            )
            decided.update(wait.escalation_id for wait in now)
        time.sleep(0.05)
    status = state.status if state else "not yet created"
    return f"the run was still {status} after the scenario's timeout_s ({scenario.timeout_s:g}s)"


def _facts(rt: Runtime, state: RunState) -> RunFacts:
    calls = [
        ExecutedCall(
            tool=str(event.data.get("tool")),
            arguments=dict(event.data.get("arguments") or {}),
            ok=bool(event.data.get("ok")),
        )
        for _, event in rt.store.log.read(state.run_id)
        # An action held for a human (needs_human) did not run.
        if event.kind == EventKind.tool_call and event.data.get("needs_human") is None
    ]
    return RunFacts(
        state=state, calls=calls, cost_usd=rt.store.budgets.usage(state.run_id).cost_usd
    )


def run_trial(
    scenario: Scenario, trial: int, *, runtime: Runtime | None = None, judge: Judge | None = None
) -> TrialResult:
    """One run of ``scenario`` through the workers serving ``runtime``, checked."""
    rt = runtime or get_runtime()
    event_id = f"eval-{uuid.uuid4().hex}"
    run_id = run_id_for(event_id)
    # Stored before publishing: the first planner step reads it.
    save_scenario(rt, run_id, scenario)
    started = time.monotonic()
    client.submit(
        eval_agent_name(scenario.agent),
        scenario.event.input,
        event_id=event_id,
        budget=scenario.event.budget,
        metadata={
            **scenario.event.metadata,
            "tether_eval": {"scenario": scenario.name, "trial": trial},
        },
        runtime=rt,
    )
    settled = _settle(rt, scenario, run_id, event_id)
    duration = round(time.monotonic() - started, 3)
    if isinstance(settled, str):
        current = rt.store.get(run_id)
        if current is not None and not current.terminal:
            client.cancel(run_id, by=DECIDED_BY, runtime=rt)
        return TrialResult(
            trial=trial,
            run_id=run_id,
            status=str(current.status) if current else "none",
            passed=False,
            duration_s=duration,
            error=settled,
        )
    facts = _facts(rt, settled)
    outcomes = check(scenario.expect, facts, judge=judge)
    if not settled.terminal:
        # Left waiting for a human on purpose: end it so no evaluation escalation lingers.
        client.cancel(run_id, by=DECIDED_BY, runtime=rt)
    return TrialResult(
        trial=trial,
        run_id=run_id,
        status=str(settled.status),
        passed=all(o.status != "failed" for o in outcomes),
        steps=settled.step,
        cost_usd=facts.cost_usd,
        duration_s=duration,
        result=answer_of(settled) or None,
        error=settled.error.message if settled.error else None,
        expectations=outcomes,
    )


def run_scenarios(
    paths: Sequence[str | Path | Scenario],
    trials: int = 1,
    runtime: Runtime | None = None,
    *,
    judge: Judge | None = None,
) -> EvalReport:
    """Run every scenario (files, folders of *.yaml, or Scenario objects) ``trials`` times.

    ``judge`` defaults to the one TETHER_JUDGE_* configures; without one, judge
    expectations are skipped, not failed. Use ``report.assert_passed()`` in pytest.
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    rt = runtime or get_runtime()
    judge = judge or Judge.from_settings()
    reports: list[ScenarioReport] = []
    jobs: list[tuple[ScenarioReport, Scenario]] = []
    files = [p for p in paths if not isinstance(p, Scenario)]
    loaded: list[tuple[str, Scenario | ScenarioFileError]] = []
    for item in paths:
        if isinstance(item, Scenario):
            loaded.append(("<object>", item))
    for path in scenario_paths(files):
        try:
            loaded.append((str(path), load_scenario(path)))
        except ScenarioFileError as exc:
            loaded.append((str(path), exc))
    for source, scenario in loaded:
        if isinstance(scenario, ScenarioFileError):
            reports.append(
                ScenarioReport(
                    name=Path(source).stem, path=source, agent="?", trials=[], error=str(scenario)
                )
            )
            continue
        report = ScenarioReport(name=scenario.name, path=source, agent=scenario.agent, trials=[])
        reports.append(report)
        jobs.append((report, scenario))

    with ThreadPoolExecutor(PARALLEL_TRIALS) as pool:
        futures = [
            (report, pool.submit(run_trial, scenario, n, runtime=rt, judge=judge))
            for report, scenario in jobs
            for n in range(1, trials + 1)
        ]
        for report, future in futures:
            report.trials.append(future.result())
    return EvalReport(k=trials, scenarios=reports)
