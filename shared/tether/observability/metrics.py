"""Prometheus metrics: what Tether counts, and how each service serves /metrics.

Every fact is counted once however often its message is delivered: the
helpers here are called only on the path where the commit recording the fact
won (a run created, a step committed, a tool result stored first, an
escalation opened, a run ended), never merely because a handler ran.

Under a prefork pool each child counts in its own process; `tether worker`
points PROMETHEUS_MULTIPROC_DIR at a directory of the worker's own (wiped at
start), and the main process's endpoint sums the children's files. Figures
read from Redis (queues, pending escalations, feedback) are collected at scrape time by
one service only, the escalation service, so they are not multiplied by the
number of processes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from pydantic import BaseModel

from tether.observability import probes
from tether.store import keys
from tether.store.budgets import BudgetUsage
from tether.store.state import RunState, RunStatus
from tether.store.versioned import SideWrite
from tether.transport.celery_app import ESCALATIONS_QUEUE, PLAN_QUEUE, TOOLS_QUEUE
from tether.transport.wire import GuardrailFinding, Observation, ToolAction

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Runtime._send stamps every message with this header (seconds since the epoch).
PUBLISHED_AT_HEADER = "tether_published_at"
QUEUES = (PLAN_QUEUE, TOOLS_QUEUE, ESCALATIONS_QUEUE)

_LATENCY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_RUN_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
_COUNT_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89)

RUNS_STARTED = Counter(
    "tether_runs_started_total", "Runs created from a TaskEvent", ["agent", "version"]
)
RUNS_FINISHED = Counter(
    "tether_runs_finished_total",
    "Runs that reached a terminal status",
    ["agent", "version", "status"],
)
RUN_STEPS = Histogram(
    "tether_run_steps",
    "Planning steps per finished run",
    ["agent", "version", "status"],
    buckets=_COUNT_BUCKETS,
)
RUN_TOOL_CALLS = Histogram(
    "tether_run_tool_calls",
    "Tool results per finished run",
    ["agent", "version", "status"],
    buckets=_COUNT_BUCKETS,
)
RUN_DURATION = Histogram(
    "tether_run_duration_seconds",
    "Whole runs, from creation to their terminal commit",
    ["agent", "version", "status"],
    buckets=_RUN_BUCKETS,
)
STEPS = Counter("tether_planner_steps_total", "Planning steps committed", ["agent", "version"])
TOKENS = Counter(
    "tether_model_tokens_total", "Model tokens of committed steps", ["agent", "version", "model"]
)
COST = Counter(
    "tether_model_cost_usd_total",
    "Model cost of committed steps, USD",
    ["agent", "version", "model"],
)
MODEL_LATENCY = Histogram(
    "tether_model_latency_seconds",
    "Model call latency, retries included",
    ["agent", "model"],
    buckets=_LATENCY_BUCKETS,
)
TOOL_CALLS = Counter("tether_tool_calls_total", "Tool results stored", ["agent", "tool", "outcome"])
TOOL_LATENCY = Histogram(
    "tether_tool_latency_seconds",
    "Tool call latency, retries included",
    ["agent", "tool"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "tether_queue_wait_seconds",
    "From a message's publication to the start of its first handling",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)
RUN_QUEUE_WAIT = Histogram(
    "tether_run_queue_wait_seconds",
    "From an event's first publish to its run's creation, waits for capacity included; "
    'tenant: those named in the settings, else "other" (tether.planner.admission)',
    ["tenant", "priority"],
    buckets=_RUN_BUCKETS,
)
ERRORS = Counter(
    "tether_errors_total",
    "Failures by category; source: run (its ending), step (a refused model turn), "
    "tool (a failed tool result)",
    ["agent", "category", "source"],
)
BUDGET_EXHAUSTED = Counter(
    "tether_budget_exhausted_total", "Runs ended by their budget, by limit", ["agent", "limit"]
)
ESCALATIONS_OPENED = Counter(
    "tether_escalations_opened_total", "Escalations opened", ["agent", "kind"]
)
ESCALATIONS_EXPIRED = Counter(
    "tether_escalations_expired_total",
    "Escalations no one decided before they expired",
    ["agent", "kind"],
)
DEAD_LETTERS = Counter(
    "tether_dead_letters_total", "Messages that became dead letters", ["task", "category"]
)
FORGED_MESSAGES = Counter(
    "tether_forged_messages_total",
    "Messages refused because the state they claim is not what Redis holds (forged or "
    "replayed); queue: the task that consumed it",
    ["queue", "reason"],
)
GUARDRAIL_OUTCOMES = Counter(
    "tether_guardrail_outcomes_total",
    "Guardrail outcomes (pass, block, escalate, rewrite) by place and guardrail, counted "
    "by the commit or first stored result that recorded them",
    ["place", "outcome", "guardrail"],
)
RATE_LIMITED = Counter(
    "tether_rate_limited_seconds_total",
    "Seconds model calls and tool calls were held back by a shared rate limit or an "
    "endpoint's 429 pause, counted once per wait; limit: model:ENDPOINT|MODEL or tool:NAME",
    ["limit"],
)


# counting, on the path where the fact's commit won ----------------------------------


def run_started(state: RunState) -> None:
    RUNS_STARTED.labels(state.agent, state.agent_version).inc()


def run_finished(state: RunState) -> None:
    labels = (state.agent, state.agent_version, state.status)
    RUNS_FINISHED.labels(*labels).inc()
    RUN_STEPS.labels(*labels).observe(state.step)
    RUN_TOOL_CALLS.labels(*labels).observe(len(state.completed_actions))
    ended = state.finished_at or state.updated_at
    RUN_DURATION.labels(*labels).observe(max(0.0, (ended - state.created_at).total_seconds()))
    if state.error is not None:
        ERRORS.labels(state.agent, state.error.category, "run").inc()
    if state.status == RunStatus.budget_exhausted:
        # The refusal names its limit (RunError.limit); "unknown" when no budget was open.
        limit = state.error.limit if state.error is not None else None
        BUDGET_EXHAUSTED.labels(state.agent, limit or "unknown").inc()


def step_committed(
    state: RunState, model: str, tokens: int, cost_usd: float, latency_s: float
) -> None:
    """A planning step committed (or ended the run): its one model call counts now."""
    STEPS.labels(state.agent, state.agent_version).inc()
    TOKENS.labels(state.agent, state.agent_version, model).inc(tokens)
    COST.labels(state.agent, state.agent_version, model).inc(cost_usd)
    MODEL_LATENCY.labels(state.agent, model).observe(latency_s)


def model_spent(state: RunState, model: str, spent: BudgetUsage) -> None:
    """A model call outside the run's steps (a thread's summary at intake)."""
    TOKENS.labels(state.agent, state.agent_version, model).inc(spent.tokens)
    COST.labels(state.agent, state.agent_version, model).inc(spent.cost_usd)


def tool_result_stored(action: ToolAction, observation: Observation) -> None:
    TOOL_CALLS.labels(action.agent, action.tool, "ok" if observation.ok else "error").inc()
    TOOL_LATENCY.labels(action.agent, action.tool).observe(observation.latency_ms / 1000)
    if not observation.ok and observation.error_category is not None:
        ERRORS.labels(action.agent, observation.error_category, "tool").inc()


def forged_message_refused(queue: str, reason: str) -> None:
    """A message refused as forged, counted where its dead letter was first written."""
    FORGED_MESSAGES.labels(queue, reason).inc()


def guardrail_outcomes(findings: Iterable[GuardrailFinding]) -> None:
    """Guardrail outcomes, counted where the commit (or first stored result) holding them won."""
    for finding in findings:
        GUARDRAIL_OUTCOMES.labels(finding.place, finding.outcome, finding.guardrail).inc()


def rate_limited(limit: str, waited_s: float) -> None:
    """A call was held back (counted by the worker that took the slot, once per slot)."""
    RATE_LIMITED.labels(limit).inc(waited_s)


def run_queue_wait(tenant: str, priority: str, waited_s: float) -> None:
    """A run was created (the winning creation only): how long its event waited."""
    RUN_QUEUE_WAIT.labels(tenant, priority).observe(waited_s)


def queue_wait(queue: str, headers: Mapping[str, Any], now: float | None = None) -> None:
    """Observe a message's wait, on its first delivery only (a redelivery waited for a death)."""
    published = headers.get(PUBLISHED_AT_HEADER)
    if not isinstance(published, int | float | str):
        return  # published by something other than Runtime._send
    try:
        waited = (now or time.time()) - float(published)
    except ValueError:
        return
    QUEUE_WAIT.labels(queue).observe(max(0.0, waited))


def feedback_count_write(state: RunState, score: int) -> SideWrite:
    """The increment of ``tether_feedback_total`` that rides with a feedback's commit.

    Feedback is recorded by whichever process calls ``tether.client.feedback`` (a CLI, an
    app), which no one scrapes; so it is counted in Redis, once per winning commit, and
    the escalation service's RedisStateCollector serves the count.
    """
    field = json.dumps([state.agent, state.agent_version, str(score)])
    return SideWrite("HINCRBY", keys.FEEDBACK_COUNTS, (field, 1))


# figures read from Redis at scrape time -------------------------------------------


class RedisStateCollector(Collector):
    """Queue depth and oldest message per queue; pending escalations and the oldest's age.

    Registered in one service only: every process serving it would report the
    same Redis figures, which Prometheus would then sum.
    """

    def __init__(
        self,
        client: redis.Redis,
        queues: Iterable[str] = QUEUES,
        broker: redis.Redis | None = None,
    ) -> None:
        self._client = client
        self._queues = tuple(queues)
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        figures = read_redis_figures(self._client, self._queues, broker=self._broker)
        yield GaugeMetricFamily(
            "tether_escalations_pending",
            "Escalations waiting for a human",
            value=figures.escalations_pending,
        )
        yield GaugeMetricFamily(
            "tether_escalation_oldest_pending_age_seconds",
            "Age of the oldest pending escalation (0 when none)",
            value=figures.oldest_escalation_age_s,
        )
        depth = GaugeMetricFamily(
            "tether_queue_depth", "Messages waiting in a queue", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "tether_queue_oldest_message_age_seconds",
            "Age of the oldest message waiting in a queue (0 when empty)",
            labels=["queue"],
        )
        for queue in figures.queues:
            depth.add_metric([queue.queue], float(queue.depth))
            age.add_metric([queue.queue], queue.oldest_age_s)
        yield depth
        yield age
        feedback = CounterMetricFamily(
            "tether_feedback",
            "User feedback recorded on runs, by the run's agent and version and the score",
            labels=["agent", "version", "score"],
        )
        for (agent, version, score), count in sorted(figures.feedback.items()):
            feedback.add_metric([agent, version, score], float(count))
        yield feedback


class QueueFigures(BaseModel):
    queue: str
    depth: int
    # 0 when the queue is empty or its oldest message carries no publish time.
    oldest_age_s: float


class RedisFigures(BaseModel):
    """What RedisStateCollector serves, also read by `tether top`."""

    escalations_pending: int
    # 0 when none is pending.
    oldest_escalation_age_s: float
    queues: list[QueueFigures]
    # (agent, version, score) -> feedbacks recorded, from keys.FEEDBACK_COUNTS.
    feedback: dict[tuple[str, str, str], int] = {}


def read_redis_figures(
    client: redis.Redis,
    queues: Iterable[str] = QUEUES,
    now: float | None = None,
    broker: redis.Redis | None = None,
) -> RedisFigures:
    """Queue depth and oldest message per queue, pending escalations: one round trip, two
    where the broker is a Redis of its own (``broker``, TETHER_BROKER_URL)."""
    now = time.time() if now is None else now
    queues = tuple(queues)
    pipe = client.pipeline(transaction=False)
    pipe.zcard(keys.PENDING_ESCALATIONS)
    pipe.zrange(keys.PENDING_ESCALATIONS, 0, 0, withscores=True)
    pipe.hgetall(keys.FEEDBACK_COUNTS)
    queued = pipe if broker is None else broker.pipeline(transaction=False)
    for queue in queues:
        queued.llen(queue)
        # kombu pushes on the left and pops on the right: the tail is the oldest.
        queued.lindex(queue, -1)
    pending, oldest, feedback_counts, *per_queue = pipe.execute()
    if queued is not pipe:
        per_queue = queued.execute()
    oldest_pending = cast(list[tuple[str, float]], oldest)
    rows = []
    for index, queue in enumerate(queues):
        length, tail = per_queue[2 * index], per_queue[2 * index + 1]
        published = published_at(tail) if tail is not None else None
        rows.append(
            QueueFigures(
                queue=queue,
                depth=int(length),
                oldest_age_s=max(0.0, now - published) if published is not None else 0.0,
            )
        )
    return RedisFigures(
        escalations_pending=int(pending),
        oldest_escalation_age_s=max(0.0, now - oldest_pending[0][1]) if oldest_pending else 0.0,
        queues=rows,
        feedback=_feedback_counts(cast(dict[str, str], feedback_counts)),
    )


def _feedback_counts(raw: dict[str, str]) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = {}
    for field, count in raw.items():
        try:
            agent, version, score = (str(part) for part in json.loads(field))
            counts[(agent, version, score)] = int(count)
        except (ValueError, TypeError):
            continue  # not a field feedback_count_write wrote
    return counts


def published_at(raw_message: str | bytes) -> float | None:
    """The publish time Runtime._send stamped on a message as kombu stores it, if any."""
    try:
        headers = json.loads(raw_message).get("headers") or {}
        return float(headers[PUBLISHED_AT_HEADER])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# serving ------------------------------------------------------------------------------


def prepare_multiproc_dir(service: str, port: int) -> str:
    """Give a worker about to start its own, empty PROMETHEUS_MULTIPROC_DIR; returns it.

    Under an operator's PROMETHEUS_MULTIPROC_DIR it is ``<dir>/<service>-<port>``
    (one per endpoint, so services on one host never sum each other's counts);
    otherwise a fresh temporary directory. Files left by an earlier process
    would be summed into this one's counts, so the directory is wiped first.
    """
    base = os.environ.get(MULTIPROC_ENV)
    if base:
        path = Path(base) / f"{service}-{port}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"tether-{service}-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


def serve(
    port: int,
    *,
    redis_state: redis.Redis | None = None,
    broker: redis.Redis | None = None,
    addr: str = "0.0.0.0",
    readiness: probes.ReadinessCheck | None = None,
) -> None:
    """Serve /metrics on ``port``; with ``redis_state``, also the figures read from Redis.

    The same port answers /healthz and /readyz (``readiness``), tether.observability.probes.
    """
    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    if redis_state is not None:
        registry.register(RedisStateCollector(redis_state, broker=broker))
    probes.start_server(port, addr=addr, registry=registry, readiness=readiness)
