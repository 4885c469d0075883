"""Running a tool: retried on its transient errors with backoff, under its timeout,
its output capped.

A non-idempotent tool leaves an in-flight marker before it starts (inflight.lua):
a later delivery that finds the marker but no result knows the first attempt
died mid-call, and asks a human instead of running the side effect again.
"""

from __future__ import annotations

import json
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from tether.agent.tools import Tool, ToolContext
from tether.errors import TetherError, ToolTimeoutError
from tether.executor import outcomes, screening
from tether.runtime import Runtime
from tether.store import keys
from tether.store.scripts import Script
from tether.transport.wire import ErrorCategory, Observation, ToolAction

INFLIGHT = Script.load("tether.executor", "inflight.lua")


def claim(rt: Runtime, action: ToolAction) -> bool:
    """Leave the in-flight marker; False if this attempt's try was already used."""
    attempt = f"rerun:{action.rerun_approval}" if action.rerun_approval else "1"
    marker = keys.action_inflight(action.action_id)
    return bool(INFLIGHT.run(rt.store.client, keys=[marker], args=[attempt, rt.store.run_ttl_s]))


def run_tool(rt: Runtime, action: ToolAction, tool: Tool, *, leased: bool) -> Observation:
    context = ToolContext(
        run_id=action.run_id, action_id=action.action_id, agent=action.agent, step=action.step
    )
    policy = tool.retry
    retrying = Retrying(
        retry=retry_if_exception_type(policy.retry_on),
        wait=wait_exponential(multiplier=policy.backoff_s, max=policy.max_backoff_s)
        + wait_random(0, policy.backoff_s),
        stop=stop_after_attempt(policy.max_attempts),
        reraise=True,
    )
    started = time.perf_counter()
    outcome: dict[str, Any]
    try:
        output = retrying(tool.invoke, action.arguments, context)
    except ValidationError as exc:
        outcome = {
            "ok": False,
            "category": ErrorCategory.tool_validation,
            "error": f"tool {tool.name!r} got or returned invalid data: {exc.errors()[0]['msg']}",
        }
    except (ToolTimeoutError, SoftTimeLimitExceeded) as exc:
        if not tool.idempotent:
            # The call may still be running on its abandoned thread.
            return outcomes.unknown_outcome(
                rt, action, ErrorCategory.timeout, f"its call {action.action_id} timed out ({exc})"
            )
        outcome = {"ok": False, "category": ErrorCategory.timeout, "error": _timed_out(tool, exc)}
    except policy.retry_on as exc:
        outcome = {
            "ok": False,
            "category": ErrorCategory.tool_transient,
            "error": f"tool {tool.name!r} kept failing transiently: {type(exc).__name__}: {exc}; "
            "it may work later",
        }
    except Exception as exc:
        message = str(exc) if isinstance(exc, TetherError) else f"{type(exc).__name__}: {exc}"
        outcome = {
            "ok": False,
            "category": ErrorCategory.tool_permanent,
            "error": f"tool {tool.name!r} failed: {message}",
        }
    else:
        capped_output = capped(output, rt.settings.max_tool_output_bytes)
        outcome = screening.screened_result(rt, action, tool, capped_output)
    attempts = int(retrying.statistics.get("attempt_number", 1))
    return outcomes.report(rt, action, started=started, attempts=attempts, leased=leased, **outcome)


def capped(output: Any, cap: int) -> Any:
    """``output``, or where its JSON is over ``cap`` bytes, its head and a note saying so.

    The call did happen (it may have had effects), so the outcome stays a success:
    an error would invite the model to make the call again.
    """
    text = json.dumps(output, default=str)
    size = len(text.encode())
    if size <= cap:
        return output
    head = text.encode()[: cap - 512].decode(errors="ignore")
    return {
        "truncated": (
            f"the tool's output was {size} bytes of JSON, over the {cap} kept "
            "(TETHER_MAX_TOOL_OUTPUT_BYTES); its first part follows: ask for less"
        ),
        "head": head,
    }


def _timed_out(tool: Tool, exc: BaseException) -> str:
    if isinstance(exc, SoftTimeLimitExceeded):
        return (
            f"tool {tool.name!r} ran past the task's soft time limit "
            "(TETHER_TASK_SOFT_TIME_LIMIT_S); it may work with a smaller request"
        )
    return str(exc)
