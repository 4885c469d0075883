"""The executor: one message is one tool action.

A result is stored under the action's id before the observation goes out, so
a redelivered action returns the stored result instead of running again, and
an in-flight lock keeps two deliveries of one action from running at once.
"""

from __future__ import annotations

import time

from pydantic import ValidationError

from tether import keys
from tether.agents import get_agent
from tether.errors import InvalidToolCallError, TetherError, ToolTimeoutError, UnknownAgentError
from tether.messages import ErrorCategory, Observation, ToolAction
from tether.runtime import Runtime
from tether.telemetry import TOOL_LATENCY, log
from tether.tools import ToolContext

LOCK_MARGIN_S = 30


def execute(rt: Runtime, action: ToolAction) -> None:
    state = rt.store.get(action.run_id)
    if state is None:
        log.info("action_skipped", action_id=action.action_id, reason="run gone")
        return
    if state.terminal:
        rt.store.log(
            action.run_id,
            "action_skipped",
            action.step,
            action_id=action.action_id,
            reason=f"run is {state.status}",
        )
        return
    stored = rt.store.get_result(action.action_id)
    if stored is not None:
        rt.send_observation(stored)
        return
    wall = rt.store.budgets.reserve(action.run_id, f"exec:{action.action_id}")
    if not wall.granted:
        _report(
            rt,
            action,
            ok=False,
            error=f"not run: budget exhausted ({wall.reason})",
            category=ErrorCategory.budget,
            latency_ms=0.0,
        )
        return

    try:
        tool = get_agent(action.agent).tool(action.tool)
    except (UnknownAgentError, InvalidToolCallError) as exc:
        _report(
            rt,
            action,
            ok=False,
            error=str(exc),
            category=ErrorCategory.tool_permanent,
            latency_ms=0.0,
        )
        return

    lock = keys.action_lock(action.action_id)
    if not rt.store.client.set(lock, "1", nx=True, ex=int(tool.timeout_s) + LOCK_MARGIN_S):
        log.info("action_in_flight_elsewhere", action_id=action.action_id)
        return
    context = ToolContext(
        run_id=action.run_id, action_id=action.action_id, agent=action.agent, step=action.step
    )
    started = time.perf_counter()
    try:
        output = tool.invoke(action.arguments, context)
    except ValidationError as exc:
        _report(
            rt,
            action,
            ok=False,
            category=ErrorCategory.tool_validation,
            started=started,
            error=f"tool {tool.name!r} got or returned invalid data: {exc.errors()[0]['msg']}",
        )
    except ToolTimeoutError as exc:
        _report(
            rt, action, ok=False, error=str(exc), category=ErrorCategory.timeout, started=started
        )
    except Exception as exc:
        message = str(exc) if isinstance(exc, TetherError) else f"{type(exc).__name__}: {exc}"
        _report(
            rt,
            action,
            ok=False,
            error=f"tool {tool.name!r} failed: {message}",
            category=ErrorCategory.tool_permanent,
            started=started,
        )
    else:
        _report(rt, action, ok=True, output=output, started=started)
    finally:
        rt.store.client.delete(lock)


def _report(
    rt: Runtime,
    action: ToolAction,
    *,
    ok: bool,
    output: object = None,
    error: str | None = None,
    category: ErrorCategory | None = None,
    started: float | None = None,
    latency_ms: float | None = None,
) -> None:
    if latency_ms is None:
        latency_ms = (time.perf_counter() - (started or time.perf_counter())) * 1000
    observation = rt.store.save_result(
        Observation(
            action_id=action.action_id,
            run_id=action.run_id,
            step=action.step,
            tool=action.tool,
            tool_call_id=action.tool_call_id,
            ok=ok,
            output=output,
            error=error,
            error_category=category,
            latency_ms=round(latency_ms, 3),
        )
    )
    TOOL_LATENCY.labels(action.agent, action.tool).observe(observation.latency_ms / 1000)
    rt.store.log(
        action.run_id,
        "tool_call",
        action.step,
        action_id=action.action_id,
        tool=action.tool,
        arguments=action.arguments,
        ok=observation.ok,
        output=observation.output,
        error=observation.error,
        error_category=observation.error_category,
        latency_ms=observation.latency_ms,
    )
    rt.send_observation(observation)
