"""What an evaluation reports, as pydantic models (the JSON of `tether eval --json`), and pass^k.

pass^k is the chance that k trials of a scenario all pass (is the agent
reliable?), pass@k that at least one of k does (can it do it at all?). From
n trials of which c passed, both are estimated without bias as in the Codex
paper (pass@k) and tau-bench (pass^k): C(c,k)/C(n,k) and 1 - C(n-c,k)/C(n,k).
With n == k they are simply "all passed" and "any passed".
"""

from __future__ import annotations

from math import comb
from typing import Literal

from pydantic import BaseModel, Field

ExpectationStatus = Literal["passed", "failed", "skipped"]


class ExpectationResult(BaseModel):
    expectation: str
    status: ExpectationStatus
    reason: str = ""


class TrialResult(BaseModel):
    trial: int
    run_id: str
    status: str
    passed: bool
    steps: int = 0
    cost_usd: float = 0.0
    duration_s: float = 0.0
    result: str | None = None
    error: str | None = None
    expectations: list[ExpectationResult] = Field(default_factory=list)

    @property
    def failures(self) -> list[ExpectationResult]:
        return [e for e in self.expectations if e.status == "failed"]


def pass_hat_k(n: int, c: int, k: int) -> float:
    """pass^k: the chance that k trials drawn from n (c passed) all pass."""
    _check(n, c, k)
    return comb(c, k) / comb(n, k)


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k: the chance that at least one of k trials drawn from n (c passed) passes."""
    _check(n, c, k)
    return 1.0 - comb(n - c, k) / comb(n, k)


def _check(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= passed ({c}) <= trials ({n}) and 1 <= k ({k}) <= trials")


class ScenarioReport(BaseModel):
    name: str
    path: str
    agent: str
    trials: list[TrialResult]
    error: str | None = Field(default=None, description="the scenario could not run at all")

    @property
    def n(self) -> int:
        return len(self.trials)

    @property
    def passed_trials(self) -> int:
        return sum(t.passed for t in self.trials)

    @property
    def passed(self) -> bool:
        """pass^k for k = every trial run: the scenario passes only if all its trials do."""
        return self.error is None and self.n > 0 and self.passed_trials == self.n

    def pass_hat(self, k: int | None = None) -> float:
        return pass_hat_k(self.n, self.passed_trials, k or self.n) if self.n else 0.0

    def pass_at(self, k: int | None = None) -> float:
        return pass_at_k(self.n, self.passed_trials, k or self.n) if self.n else 0.0

    def reasons(self) -> list[str]:
        """Each distinct reason a trial failed, with the trials it failed in."""
        if self.error:
            return [self.error]
        seen: dict[str, list[int]] = {}
        for trial in self.trials:
            for failure in trial.failures:
                seen.setdefault(f"{failure.expectation}: {failure.reason}", []).append(trial.trial)
            if trial.error and not trial.failures and not trial.passed:
                seen.setdefault(trial.error, []).append(trial.trial)
        return [f"{reason} (trial {', '.join(map(str, ts))})" for reason, ts in seen.items()]


class ScenarioSummary(BaseModel):
    name: str
    path: str
    agent: str
    passed: bool
    trials: int
    passed_trials: int
    pass_hat_k: float
    pass_at_k: float
    reasons: list[str]
    error: str | None
    results: list[TrialResult]


class EvalReport(BaseModel):
    k: int
    scenarios: list[ScenarioReport]

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scenarios)

    @property
    def pass_hat_k(self) -> float:
        """The mean pass^k over scenarios: the share of scenarios the agent does reliably."""
        return (
            sum(s.pass_hat(self.k) for s in self.scenarios) / len(self.scenarios)
            if self.scenarios
            else 0.0
        )

    @property
    def pass_at_k(self) -> float:
        return (
            sum(s.pass_at(self.k) for s in self.scenarios) / len(self.scenarios)
            if self.scenarios
            else 0.0
        )

    def summary(self) -> EvalSummary:
        return EvalSummary(
            k=self.k,
            passed=self.passed,
            pass_hat_k=round(self.pass_hat_k, 4),
            pass_at_k=round(self.pass_at_k, 4),
            scenarios=[
                ScenarioSummary(
                    name=s.name,
                    path=s.path,
                    agent=s.agent,
                    passed=s.passed,
                    trials=s.n,
                    passed_trials=s.passed_trials,
                    pass_hat_k=round(s.pass_hat(self.k), 4) if s.n >= self.k else 0.0,
                    pass_at_k=round(s.pass_at(self.k), 4) if s.n >= self.k else 0.0,
                    reasons=s.reasons(),
                    error=s.error,
                    results=s.trials,
                )
                for s in self.scenarios
            ],
        )

    def assert_passed(self) -> None:
        """For pytest: raise AssertionError listing every failed scenario and why."""
        failed = [s for s in self.scenarios if not s.passed]
        if failed:
            lines = [
                f"{s.name} ({s.passed_trials}/{s.n} trials passed): " + "; ".join(s.reasons())
                for s in failed
            ]
            raise AssertionError(
                f"{len(failed)} of {len(self.scenarios)} scenarios failed:\n  " + "\n  ".join(lines)
            )


class EvalSummary(BaseModel):
    """The JSON `tether eval --json` prints."""

    k: int
    passed: bool
    pass_hat_k: float
    pass_at_k: float
    scenarios: list[ScenarioSummary]
