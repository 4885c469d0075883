"""What Tether's own handlers cost a step, with Celery left out.

The executor's and the planner's handlers (tether.executor.actions.execute,
tether.planner.observe and the step it plans) are called in this process, one
run at a time, against a Redis of their own. What they publish goes onto the
queues as a worker's would (tether.transport.held_publish, inside the task), and the
harness takes it from there, outside the timing. Each call is wrapped in a
task's begin and end, as a worker does (held-back writes go out with the next
round trip). So the figures hold Tether's work and its publishing, without
Celery's consuming (the landing move, the prefork hand-off, the ack) and
without the contention of several processes on the cores: the cost each
change to the hot path moves, measured with little noise.
"""

from __future__ import annotations

import base64
import json
import statistics
import time
import uuid
from typing import Any, cast

import redis

from bench.driver import log
from bench.plan import Plan, Results
from tether import planner
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.dev.redis_server import RedisServer
from tether.executor import actions as executor
from tether.runtime import Runtime
from tether.transport.celery_app import PLAN_QUEUE, TOOLS_QUEUE
from tether.transport.wire import Observation, ToolAction


def measure_handlers(plan: Plan, res: Results) -> None:
    with RedisServer() as server:
        rt = Runtime(Settings(redis_url=server.url))
        load_agent_modules(["bench.agents"])
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        for _ in range(plan.warmup):
            _run(rt, plan.steps)
        admin.config_resetstat()
        cpu_before = _redis_cpu(admin)
        per_run = [_run(rt, plan.steps) for _ in range(plan.seq_runs)]
        redis_cpu = _redis_cpu(admin) - cpu_before
        stats: dict[str, dict[str, Any]] = admin.info("commandstats")
    steps = plan.steps * plan.seq_runs
    res.handlers = {
        "steps_per_run": plan.steps,
        "runs": plan.seq_runs,
        "executor_ms_per_step": round(statistics.median(r["executor"] for r in per_run), 3),
        "planner_ms_per_step": round(statistics.median(r["planner"] for r in per_run), 3),
        "redis_cpu_ms_per_step": round(redis_cpu / steps * 1000, 3),
        "redis_commands_per_step": round(sum(s["calls"] for s in stats.values()) / steps, 1),
        # Redis time per step by command (scripts' inner commands under their own names).
        "redis_usec_per_step": {
            name.removeprefix("cmdstat_"): round(s["usec"] / steps, 1)
            for name, s in sorted(stats.items(), key=lambda kv: -kv[1]["usec"])
        },
    }
    log(handlers_line(res.handlers))


def _run(rt: Runtime, steps: int) -> dict[str, float]:
    """One run of the N-step agent, handler by handler; ms per step in each service."""
    spent = {"executor": 0.0, "planner": 0.0}
    event = {"event_id": f"handlers-{uuid.uuid4().hex}", "agent": "bench_stepper"}
    _as_task(rt, planner.start, {**event, "input": f"steps={steps}"})
    while (message := _next_message(rt)) is not None:
        started = time.perf_counter()
        if isinstance(message, ToolAction):
            _as_task(rt, executor.execute, message)
            spent["executor"] += time.perf_counter() - started
        else:
            _as_task(rt, planner.observe, message)
            spent["planner"] += time.perf_counter() - started
    return {service: seconds / steps * 1000 for service, seconds in spent.items()}


def _next_message(rt: Runtime) -> ToolAction | Observation | None:
    """The oldest message a handler published, decoded as its worker would."""
    messages: tuple[tuple[str, str, type[ToolAction] | type[Observation]], ...] = (
        (TOOLS_QUEUE, "action", ToolAction),
        (PLAN_QUEUE, "observation", Observation),
    )
    for queue, field, model in messages:
        raw = cast(bytes | None, rt.store.client.rpop(queue))
        if raw is not None:
            _args, kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
            return model.model_validate(kwargs[field])
    return None


def _as_task(rt: Runtime, handler: Any, message: Any) -> None:
    rt.store.begin_task()
    try:
        handler(rt, message)
    finally:
        rt.store.end_task()


def _redis_cpu(admin: redis.Redis) -> float:
    cpu = admin.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def handlers_line(handlers: dict[str, Any]) -> str:
    return (
        f"handlers: executor {handlers['executor_ms_per_step']:.3f} ms/step, planner "
        f"{handlers['planner_ms_per_step']:.3f} ms/step, Redis "
        f"{handlers['redis_cpu_ms_per_step']:.3f} ms/step CPU, "
        f"{handlers['redis_commands_per_step']} commands/step (in one process, Celery left out)"
    )
