"""The executor: one message is one tool action.

A result is stored under the action's id before the observation goes out, so
a redelivered action returns the stored result instead of running again. For a
non-idempotent tool an in-flight lock keeps two deliveries of one action from
running at once, and an in-flight marker left before it starts tells a later
delivery that finds no result that the first attempt died mid-call: it asks a
human instead of running the side effect again.

An idempotent tool (as its agent declares it on this worker, not as the message
says) takes the fast path: no lock, so two deliveries may both run it, and the
first result stored wins (tether.executor.outcomes), so its observation counts once.

A message is a claim, not an order: an action runs only where the run's
committed state backs it (tether.executor.trust). The tool runs under
tether.executor.calls, and what it did is recorded by tether.executor.outcomes.
"""

from __future__ import annotations

from redis.client import Pipeline

from tether.agent.definition import get_agent
from tether.errors import ActionInFlightError, InvalidToolCallError, UnknownAgentError
from tether.executor import calls, outcomes, ratelimited, trust
from tether.observability import tracing
from tether.observability.logs import log
from tether.rollout import shadow
from tether.runtime import Runtime
from tether.store import keys
from tether.store.budgets import Reservation
from tether.store.leases import Lease
from tether.store.state import RunStatus
from tether.transport.wire import ErrorCategory, EventKind, Observation, ToolAction

# While a worker runs an action it renews this lease; if it dies, the lease
# lapses within LEASE_S and a redelivery can look at what the attempt left.
LEASE_S = 10.0


def declared_idempotent(action: ToolAction) -> bool:
    """Whether the agent loaded here declares ``action``'s tool idempotent; the message's
    own flag is a claim (invariant 7), and an agent or tool unknown here takes the lease."""
    try:
        return get_agent(action.agent).tool(action.tool).idempotent
    except (UnknownAgentError, InvalidToolCallError):
        return False


def execute(rt: Runtime, action: ToolAction) -> None:
    lease = Lease(rt.store.client, keys.action_lock(action.action_id), LEASE_S)
    fast = declared_idempotent(action)

    def open_action(pipe: Pipeline) -> None:
        if not fast:
            lease.add_acquire(pipe)
        # Charges nothing, so it is harmless before the checks below.
        rt.store.budgets.add_check(pipe, action.run_id)

    # Lease (not on the fast path), wall-time check, run status, any stored result and
    # the action as the committed state holds it pending: one round trip.
    status, stored, pending, (*leased, reserved) = rt.store.action_state(
        action.run_id, action.action_id, also=open_action
    )
    acquired = fast or lease.acquired(leased[0])
    # A stored result is sent again below, whoever asks: it is what the action did.
    refused = trust.distrust(rt, action, status, pending) if stored is None else None
    if refused is not None:
        if acquired and not fast:
            lease.release(rt.store.batch)
        late = trust.late_attempt(rt, action, refused[0], pending)
        if late is not None:
            rt.store.log.append(
                action.run_id,
                EventKind.action_skipped,
                action.step,
                action_id=action.action_id,
                reason=late,
            )
            return
        trust.refuse(rt, action, *refused)
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
    wall = rt.store.budgets.reservation(reserved)
    if fast:
        observation = _perform(rt, action, status, stored, wall, leased=False)
        if observation is not None:
            rt.send_observation(observation)
        return
    try:
        observation = _perform(rt, action, status, stored, wall, leased=True)
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
    *,
    leased: bool,
) -> Observation | None:
    """What to tell the planner about ``action``, run under its lease where ``leased``
    (else on the fast path); None: nothing."""
    if status is None:
        log.info("action_skipped", action_id=action.action_id, reason="run gone")
        return None
    if status.terminal:
        rt.store.log.append(
            action.run_id,
            EventKind.action_skipped,
            action.step,
            action_id=action.action_id,
            reason=f"run is {status}",
        )
        return None
    if stored is not None:
        return stored
    if not wall.granted:
        return outcomes.report(
            rt,
            action,
            ok=False,
            error=f"not run: budget exhausted ({wall.reason})",
            category=ErrorCategory.budget,
            leased=leased,
        )
    try:
        agent = get_agent(action.agent)
    except UnknownAgentError as exc:
        return outcomes.report(
            rt,
            action,
            ok=False,
            error=str(exc),
            category=ErrorCategory.tool_permanent,
            leased=leased,
        )
    try:
        tool = agent.tool(action.tool)
    except InvalidToolCallError:
        # The committed state holds this action pending (trust.distrust checked it), so the
        # agent declared the tool when its step was planned: a deploy took it away since
        # (deploy skew, not forgery). Not run; the model hears why, as for a removed agent.
        return outcomes.report(
            rt,
            action,
            ok=False,
            category=ErrorCategory.tool_permanent,
            error=f"agent {action.agent!r} no longer declares tool {action.tool!r} on this "
            "worker (it was redeployed while the call was pending), so the call was not run; "
            "redeploy the agent with the tool, or go on without it",
            leased=leased,
        )
    if shadow.held_back(agent, tool):
        # The one gate before a tool runs: a shadow's call is simulated or not run at all.
        return outcomes.report(rt, action, leased=leased, **shadow.simulate(rt, action, tool))
    if ratelimited.held_back(rt, action, tool):
        return None  # its turn comes later: rescheduled, not slept in this worker
    if not tool.idempotent and not calls.claim(rt, action):
        attempt = (
            f"the re-run approved in {action.rerun_approval}"
            if action.rerun_approval
            else "an earlier attempt"
        )
        return outcomes.unknown_outcome(
            rt, action, ErrorCategory.internal, f"{attempt} of {action.action_id} died mid-call"
        )
    with tracing.tool_call(action) as span:
        observation = calls.run_tool(rt, action, tool, leased=leased)
        tracing.record_outcome(span, observation)
    return observation
