"""The executor: one message is one tool action.

A result is stored under the action's id before the observation goes out, so
a redelivered action returns the stored result instead of running again. An
in-flight lock keeps two deliveries of one action from running at once. A
non-idempotent tool also leaves an in-flight marker before it starts: a later
delivery that finds the marker but no result knows the first attempt died
mid-call, and asks a human instead of running the side effect again.

A message is a claim, not an order: an action runs only where the run's
committed state holds it pending, exactly as sent (tool, agent, arguments,
step, re-run approval). The planner puts an approval-required action there
only after its decided approval (a human's recorded decision, or the tool's
earned autonomy), and a re-run only after a decided unsafe_retry approval,
which is checked here again against the escalation record. Anything else is
refused (tether.deadletters.refuse): logged, counted, dead-lettered, not run.
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

from tether import celery_app, deadletters, escalations, keys, metrics, tracing
from tether.agents import get_agent
from tether.budgets import Reservation
from tether.errors import (
    ActionInFlightError,
    InvalidToolCallError,
    TetherError,
    ToolTimeoutError,
    UnknownAgentError,
    UnknownEscalationError,
)
from tether.evaluation import shadow
from tether.leases import Lease
from tether.messages import (
    ErrorCategory,
    EscalationKind,
    Observation,
    ToolAction,
    Verdict,
    canonical,
)
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

    # Lease, wall-time check, run status, any stored result and the action as the
    # committed state holds it pending: one round trip.
    status, stored, pending, (leased, reserved) = rt.store.action_state(
        action.run_id, action.action_id, also=open_action
    )
    acquired = lease.acquired(leased)
    # A stored result is sent again below, whoever asks: it is what the action did.
    refused = _distrust(rt, action, status, pending) if stored is None else None
    if refused is not None:
        if acquired:
            lease.release(rt.store.batch)
        late = _late_attempt(rt, action, refused[0], pending)
        if late is not None:
            rt.store.log(
                action.run_id,
                "action_skipped",
                action.step,
                action_id=action.action_id,
                reason=late,
            )
            return
        _refuse(rt, action, *refused)
        return
    if not acquired:
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
        # The committed state holds this action pending (_distrust checked it), so the
        # agent declared the tool when its step was planned: a deploy took it away since
        # (deploy skew, not forgery). Not run; the model hears why, as for a removed agent.
        return _report(
            rt,
            action,
            ok=False,
            category=ErrorCategory.tool_permanent,
            error=f"agent {action.agent!r} no longer declares tool {action.tool!r} on this "
            "worker (it was redeployed while the call was pending), so the call was not run; "
            "redeploy the agent with the tool, or go on without it",
        )
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


def _distrust(
    rt: Runtime, action: ToolAction, status: RunStatus | None, pending: ToolAction | None
) -> tuple[str, str] | None:
    """Why the committed state does not back ``action`` (reason, detail); None: it does.

    A run that has ended is no refusal: late deliveries of its actions are normal,
    and _perform skips them.
    """
    if status is None:
        return "unknown_run", f"run {action.run_id!r} does not exist"
    if status.terminal:
        return None
    if action.rerun_approval is not None:
        why = _rerun_refusal(rt, action, action.rerun_approval)
        if why is not None:
            return "rerun_not_approved", why
    if pending is None:
        return (
            "not_pending",
            f"action {action.action_id} ({action.tool!r}) is not pending in run "
            f"{action.run_id}'s committed state",
        )
    differ = _differing(action, pending)
    if differ:
        return (
            "differs_from_pending",
            f"action {action.action_id} ({action.tool!r}) differs from the one pending in "
            f"run {action.run_id}'s committed state in {', '.join(differ)}",
        )
    return None


def _asked_human(rt: Runtime, action: ToolAction) -> bool:
    """Whether an attempt of ``action`` asked a human about it (keys.action_held)."""
    return bool(rt.store.client.exists(keys.action_held(action.action_id)))


def _differing(sent: ToolAction, held: ToolAction) -> list[str]:
    """The fields in which ``sent`` differs from ``held``, sorted."""
    mine, theirs = canonical(sent), canonical(held)
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))


def _late_attempt(
    rt: Runtime, action: ToolAction, reason: str, pending: ToolAction | None
) -> str | None:
    """Why ``action``, refused for ``reason``, is a genuine late message of an attempt
    that asked a human (keys.action_held; its worker died before the ack), to be skipped
    rather than refused as forged; None: it is refused."""
    if reason == "not_pending" and _asked_human(rt, action):
        return "it waits for a human's decision"
    if (
        reason == "differs_from_pending"
        and pending is not None
        and _differing(action, pending) == ["rerun_approval"]
        and _asked_human(rt, action)
    ):
        # The human approved a re-run since: it is pending under its own approval.
        return (
            f"an earlier attempt (re-run approval {action.rerun_approval}); the re-run "
            f"approved in {pending.rerun_approval} is pending instead"
        )
    return None


def _rerun_refusal(rt: Runtime, action: ToolAction, escalation_id: str) -> str | None:
    """Why ``escalation_id`` does not approve one more attempt of ``action``; None: it does."""
    try:
        record, _ = escalations.load(rt, escalation_id)
    except UnknownEscalationError:
        return f"re-run approval {escalation_id!r} names no escalation"
    held = record.escalation
    if (
        held.kind != EscalationKind.unsafe_retry
        or held.action is None
        or held.action.action_id != action.action_id
    ):
        return (
            f"escalation {escalation_id!r} ({held.kind}) is no unsafe_retry escalation "
            f"of action {action.action_id}"
        )
    if (
        record.status != "decided"
        or record.decision is None
        or record.decision.verdict != Verdict.approve
    ):
        verdict = record.decision.verdict if record.decision is not None else "no decision"
        return f"escalation {escalation_id!r} is {record.status} ({verdict}), not approved"
    return None


def _refuse(rt: Runtime, action: ToolAction, reason: str, detail: str) -> None:
    """Run nothing of ``action``, tell no model about it (the run goes on with what it
    decided), and keep it where an operator looks (tether.deadletters.refuse)."""
    deadletters.refuse(
        rt,
        celery_app.EXECUTE,
        {"action": action.model_dump(mode="json")},
        reason,
        f"{detail} (action {action.action_id} of run {action.run_id}, agent "
        f"{action.agent!r}, tool {action.tool!r})",
        run_id=action.run_id,
        step=action.step,
    )


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
    else:
        # What the planner checks a needs_human observation against (planner.inbox):
        # written before the observation is sent, as a result is.
        held, asked = (
            keys.action_held(action.action_id),
            keys.action_held_value(needs_human, action.rerun_approval),
        )
        if not rt.store.batch.defer("set", held, asked, ex=rt.store.run_ttl_s):
            rt.store.client.set(held, asked, ex=rt.store.run_ttl_s)
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
