"""The executor: one message is one tool action.

A result is stored under the action's id before the observation goes out, so
a redelivered action returns the stored result instead of running again. An
in-flight lock keeps two deliveries of one action from running at once. A
non-idempotent tool also leaves an in-flight marker before it starts: a later
delivery that finds the marker but no result knows the first attempt died
mid-call, and asks a human instead of running the side effect again.
"""

from __future__ import annotations

import json
import time
from importlib.resources import files
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError
from redis.client import Pipeline
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from tether import keys, metrics, tracing
from tether.agents import get_agent
from tether.budgets import Reservation
from tether.errors import (
    ActionInFlightError,
    InvalidToolCallError,
    TetherError,
    ToolTimeoutError,
    UnknownAgentError,
)
from tether.evaluation import shadow
from tether.leases import Lease
from tether.messages import ErrorCategory, EscalationKind, Observation, ToolAction
from tether.runtime import Runtime
from tether.state import RunStatus
from tether.telemetry import log
from tether.tools import Tool, ToolContext

INFLIGHT_SCRIPT = files("tether").joinpath("inflight.lua").read_text()

# While a worker runs an action it renews this lease; if it dies, the lease
# lapses within LEASE_S and a redelivery can look at what the attempt left.
LEASE_S = 10.0


def execute(rt: Runtime, action: ToolAction) -> None:
    lease = Lease(rt.store.client, keys.action_lock(action.action_id), LEASE_S)

    def open_action(pipe: Pipeline) -> None:
        lease.add_acquire(pipe)
        # Charges nothing, so it is harmless before the checks below.
        rt.store.budgets.add_check(pipe, action.run_id)

    # Lease, wall-time check, run status and any stored result: one round trip.
    status, stored, (leased, reserved) = rt.store.action_state(
        action.run_id, action.action_id, also=open_action
    )
    if not lease.acquired(leased):
        if status is None or status.terminal:
            return
        if stored is not None:
            # Its holder may have died between storing and sending: send it (again).
            rt.send_observation(stored)
            return
        # Look again as the lease would lapse if its holder is dead (no renewal).
        left_ms = rt.store.client.pttl(keys.action_lock(action.action_id))
        raise ActionInFlightError(action.action_id, max(0.2, left_ms / 1000 + 0.2))
    try:
        observation = _perform(rt, action, status, stored, rt.store.budgets.reservation(reserved))
    except BaseException:
        lease.release(rt.store.batch)
        raise
    if observation is not None and observation.needs_human is None:
        # Its result is stored: a delivery that finds the lease still held sends that
        # result, as one that took the lease would, so the lease is left to lapse.
        lease.stop_renewing()
    else:
        lease.release(rt.store.batch)
    if observation is not None:
        rt.send_observation(observation)


def _perform(
    rt: Runtime,
    action: ToolAction,
    status: RunStatus | None,
    stored: Observation | None,
    wall: Reservation,
) -> Observation | None:
    """What to tell the planner about ``action``, run under its lease; None: nothing."""
    if status is None:
        log.info("action_skipped", action_id=action.action_id, reason="run gone")
        return None
    if status.terminal:
        rt.store.log(
            action.run_id,
            "action_skipped",
            action.step,
            action_id=action.action_id,
            reason=f"run is {status}",
        )
        return None
    if stored is not None:
        return stored
    if not wall.granted:
        return _report(
            rt,
            action,
            ok=False,
            error=f"not run: budget exhausted ({wall.reason})",
            category=ErrorCategory.budget,
        )
    try:
        agent = get_agent(action.agent)
    except UnknownAgentError as exc:
        return _report(rt, action, ok=False, error=str(exc), category=ErrorCategory.tool_permanent)
    try:
        tool = agent.tool(action.tool)
    except InvalidToolCallError:
        _refuse_forged(rt, action)
        return None
    if shadow.held_back(agent, tool):
        # The one gate before a tool runs: a shadow's call is simulated or not run at all.
        return _report(rt, action, **shadow.simulate(rt, action, tool))
    if not tool.idempotent and not _claim(rt, action):
        attempt = (
            f"the re-run approved in {action.rerun_approval}"
            if action.rerun_approval
            else "an earlier attempt"
        )
        return _unknown_outcome(
            rt, action, ErrorCategory.internal, f"{attempt} of {action.action_id} died mid-call"
        )
    with tracing.tool_call(action) as span:
        observation = _run(rt, action, tool)
        tracing.record_outcome(span, observation)
    return observation


def _refuse_forged(rt: Runtime, action: ToolAction) -> None:
    """Refuse an action for a tool its agent does not declare; tell no model about it.

    The planner never publishes one (a model's call to an undeclared tool goes
    back to the model as a validation error), so whoever published this one
    reached the queue without going through a planner: the executor enforces the
    agent's tool allowlist as well. The refusal goes to the run's event log
    (``forged_action_refused``) and to tether:rejected; no observation goes to
    the planner, so the run carries on with the actions it did decide.
    """
    reason = (
        f"forged action refused: agent {action.agent!r} does not declare tool "
        f"{action.tool!r} (action {action.action_id} of run {action.run_id})"
    )
    log.warning(
        "forged_action_refused",
        run_id=action.run_id,
        action_id=action.action_id,
        agent=action.agent,
        tool=action.tool,
    )
    rt.store.log(
        action.run_id,
        "forged_action_refused",
        action.step,
        action_id=action.action_id,
        agent=action.agent,
        tool=action.tool,
    )
    rt.store.flush()
    rt.store.reject(reason, action.model_dump(mode="json"))


def _unknown_outcome(
    rt: Runtime, action: ToolAction, category: ErrorCategory, what: str
) -> Observation:
    """A non-idempotent call may or may not have taken effect: a human decides, not the model."""
    return _report(
        rt,
        action,
        ok=False,
        category=category,
        needs_human=EscalationKind.unsafe_retry,
        error=f"{action.tool!r} is not idempotent and {what}, so it may or may not have "
        "taken effect; check the target system, then approve to run it once more, answer "
        "with what happened, or reject to end the run",
    )


def _claim(rt: Runtime, action: ToolAction) -> bool:
    """Leave the in-flight marker; False if this attempt's try was already used."""
    attempt = f"rerun:{action.rerun_approval}" if action.rerun_approval else "1"
    marker = keys.action_inflight(action.action_id)
    return bool(rt.store.client.eval(INFLIGHT_SCRIPT, 1, marker, attempt, rt.store.run_ttl_s))


def _run(rt: Runtime, action: ToolAction, tool: Tool) -> Observation:
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
            return _unknown_outcome(
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
        outcome = {"ok": True, "output": capped(output, rt.settings.max_tool_output_bytes)}
    attempts = int(retrying.statistics.get("attempt_number", 1))
    return _report(rt, action, started=started, attempts=attempts, **outcome)


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


def _report(
    rt: Runtime,
    action: ToolAction,
    *,
    ok: bool,
    output: object = None,
    error: str | None = None,
    category: ErrorCategory | None = None,
    started: float | None = None,
    attempts: int = 1,
    needs_human: EscalationKind | None = None,
) -> Observation:
    """Record the action's outcome (result, log); the caller sends the observation."""
    latency_ms = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    observation = Observation(
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
        attempts=attempts,
        needs_human=needs_human,
    )
    if needs_human is None:
        # A question for a human is not the action's result: after an approval it runs.
        stored = rt.store.save_result(observation)
        if stored is observation:
            # This result is the action's first (save_result hands an earlier one back).
            metrics.tool_result_stored(action, observation)
        observation = stored
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
        attempts=observation.attempts,
        needs_human=needs_human,
    )
    return observation
