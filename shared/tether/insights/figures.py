"""The figures `tether stats` reports, as the JSON it prints and the console serves.

Each figure carries its definition (tether.insights.stats says how each is counted).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

SUCCESS_DEFINITION = (
    "succeeded / finished runs (succeeded, failed, budget_exhausted, rejected, cancelled); "
    "runs still in flight are not counted"
)
ESCALATION_DEFINITION = (
    "runs with at least one escalation opened (or waiting for a human now) / all runs in the window"
)
PER_RUN_DEFINITION = (
    "steps, tool calls, cost mean/p95, latency and error rates are over finished runs; "
    "cost total is all runs in the window, in flight included"
)


class Window(BaseModel):
    start: datetime
    end: datetime


class Filters(BaseModel):
    """What was asked for: which runs, created in which windows."""

    agent: str | None = None
    version: str | None = None
    since_s: float
    compare_to_s: float | None = None
    window: Window
    compare_window: Window | None = None


class RunCounts(BaseModel):
    total: int
    finished: int
    in_flight: int
    by_status: dict[str, int]


class SuccessRate(BaseModel):
    value: float | None
    succeeded: int
    finished: int
    definition: str = SUCCESS_DEFINITION


class Distribution(BaseModel):
    mean: float | None
    p95: float | None


class StepFigures(Distribution):
    """Planning steps per finished run, and the tool calls they made."""

    tool_calls: Distribution
    definition: str = PER_RUN_DEFINITION


class CostFigures(Distribution):
    total: float
    tokens_total: int


class LatencyFigures(BaseModel):
    """Seconds from a run's creation to its end, finished runs only."""

    p50: float | None
    p95: float | None
    p99: float | None


class ErrorFigure(BaseModel):
    count: int
    rate: float


class EscalationRate(BaseModel):
    value: float | None
    escalated: int
    runs: int
    definition: str = ESCALATION_DEFINITION


class FeedbackFigures(BaseModel):
    count: int
    runs_with_feedback: int
    mean_score: float | None
    by_score: dict[str, int]


class DriftThresholds(BaseModel):
    """When a window is flagged against the one before it."""

    steps_rise: float = 0.20
    cost_rise: float = 0.20
    success_drop_points: float = 5.0


class DriftFigure(BaseModel):
    current: float | None
    baseline: float | None
    # Relative change for steps and cost (0.25 = 25% more); points for success rate.
    change: float | None
    threshold: str
    flagged: bool


class Drift(BaseModel):
    steps: DriftFigure
    cost_usd: DriftFigure
    success_rate: DriftFigure
    flagged: list[str]


class WindowStats(BaseModel):
    runs: RunCounts
    success_rate: SuccessRate
    steps: StepFigures
    cost_usd: CostFigures
    latency_s: LatencyFigures
    errors: dict[str, ErrorFigure]
    escalation_rate: EscalationRate
    feedback: FeedbackFigures
    # Guardrail outcomes (tether.guardrails) of the window's runs, "<place>:<outcome>" -> count.
    guardrails: dict[str, int] = Field(default_factory=dict)
    # Seconds the window's runs' model and tool calls waited for shared rate limits.
    rate_limited_s: float = 0.0


class Stats(WindowStats):
    filters: Filters
    compare: WindowStats | None = None
    drift: Drift | None = None

    def to_json(self) -> str:
        """The `--json` document; ``compare`` and ``drift`` only when comparing."""
        unused = {name for name in ("compare", "drift") if getattr(self, name) is None}
        return self.model_dump_json(indent=2, exclude=unused)
