"""A message is a claim, not an order: whether the committed state backs an action.

An action runs only where the run's committed state holds it pending, exactly as
sent (tool, agent, arguments, step, re-run approval). The planner puts an
approval-required action there only after its decided approval (a human's
recorded decision, or the tool's earned autonomy), and a re-run only after a
decided unsafe_retry approval, which is checked here again against the
escalation record. Anything else is refused (tether.worker.deadletters.refuse):
logged, counted, dead-lettered, not run; but a late copy of an attempt that
asked a human is skipped, not refused.
"""

from __future__ import annotations

from tether.errors import UnknownEscalationError
from tether.escalation import records
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import RunStatus
from tether.transport import celery_app
from tether.transport.wire import EscalationKind, ToolAction, Verdict, canonical
from tether.worker import deadletters


def distrust(
    rt: Runtime, action: ToolAction, status: RunStatus | None, pending: ToolAction | None
) -> tuple[str, str] | None:
    """Why the committed state does not back ``action`` (reason, detail); None: it does.

    A run that has ended is no refusal: late deliveries of its actions are normal,
    and the executor skips them.
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


def late_attempt(
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
        record, _ = records.load(rt, escalation_id)
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


def refuse(rt: Runtime, action: ToolAction, reason: str, detail: str) -> None:
    """Run nothing of ``action``, tell no model about it (the run goes on with what it
    decided), and keep it where an operator looks (tether.worker.deadletters.refuse)."""
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
