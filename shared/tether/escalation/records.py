"""Escalations: runs that wait for a human, kept pending until someone decides.

Records are versioned documents, so a decision is recorded once even when two
people (or two deliveries) decide at the same moment. A record, its indexes and
the log entry that describes the change are written in one step, as is closing
the escalations of a run that ends (``close_writes``, in the run's own commit),
and a budget extension (with the decision that grants it, or not at all).

An escalation ends by a decision or by its own expiry, never by the run's budget
(invariant 8): each expires at ``expires_at`` (Agent.escalation_expiry_s, per
kind, else TETHER_ESCALATION_EXPIRY_S); ``expire`` records that, as a decision
would be recorded, and the planner's reconciler then ends the run ``rejected``
(tether.planner.reconcile.expire_escalations).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import cast

from tether.agent.definition import declared_name, get_agent
from tether.errors import (
    DecisionRefusedError,
    EscalationClosedError,
    StaleStateError,
    TetherError,
    UnknownEscalationError,
)
from tether.escalation import edits, operators, webhooks
from tether.escalation.stored import load as load
from tether.observability import metrics
from tether.observability.logs import log
from tether.rollout import autonomy
from tether.rollout.shadow import auto_decision
from tether.runtime import Runtime
from tether.store import keys
from tether.store.log import log_appends
from tether.store.state import EscalationRecord, HumanWait
from tether.store.versioned import Append, SideWrite
from tether.transport.celery_app import DECIDE
from tether.transport.wire import Decision, Escalation, EventKind, RunEvent, Verdict, utcnow
from tether.worker import deadletters


def expiry_s(rt: Runtime, escalation: Escalation) -> float:
    """How long ``escalation`` waits for a decision: its agent's escalation_expiry_s for
    its kind, else TETHER_ESCALATION_EXPIRY_S."""
    default = rt.settings.escalation_expiry_s
    try:
        # A variant's run (an evaluation's) expires as its declared agent does, and
        # resolving the declared agent loads no variant.
        agent = get_agent(declared_name(escalation.agent))
    except TetherError:  # an agent this service does not load: the setting holds
        return default
    return agent.expiry_s(escalation.kind, default)


def closed_why(record: EscalationRecord) -> str:
    """Why a record takes no decision any more, and what to do: for EscalationClosedError."""
    if record.status == "decided" and record.decision is not None:
        d = record.decision
        return (
            f"{d.verdict} by {d.by} at {d.at.isoformat()}; a decision is recorded once and "
            "cannot be changed"
        )
    if record.status == "expired":
        e = record.escalation
        waited = (record.expires_at - e.created_at).total_seconds() if record.expires_at else 0
        # True both before and after the sweep's second commit ends the run.
        return (
            f"no one decided it within {waited:.0f}s of {e.created_at.isoformat()}, so it "
            f"expired; its run {e.run_id} ends rejected (escalation_expired): resubmit the "
            "task with a new event id to try again, and decide sooner or raise the agent's "
            "escalation_expiry_s"
        )
    if record.status == "closed":
        return (
            f"its run ended before anyone decided ({record.closed_reason or 'run ended'}); "
            "nothing waits for this decision any more: resubmit the task if it still needs doing"
        )
    return "it takes no decision"


def _step(escalation: Escalation) -> int:
    return escalation.action.step if escalation.action else 0


def open_escalation(rt: Runtime, escalation: Escalation) -> None:
    """Keep an escalation pending; a redelivered one, or one its run closed, is left as it is."""
    expires_at = escalation.created_at + timedelta(seconds=expiry_s(rt, escalation))
    record = EscalationRecord(escalation=escalation, expires_at=expires_at)
    key = keys.escalation(escalation.escalation_id)
    created = escalation.created_at.timestamp()
    opened = RunEvent(
        run_id=escalation.run_id,
        kind=EventKind.escalation_opened,
        step=_step(escalation),
        data={
            "escalation_id": escalation.escalation_id,
            "kind": escalation.kind,
            "reason": escalation.reason,
            "expires_at": expires_at.isoformat(),
        },
    )
    rt.store.flush()  # what this task logged before comes first in the log
    try:
        rt.store.docs.write(
            key,
            record.model_dump_json(),
            0,
            # The webhook notification goes in with the opening, or not at all.
            appends=[
                *log_appends(opened),
                *webhooks.appends(rt.settings, escalation, webhooks.OPENED),
            ],
            side_writes=[
                SideWrite("ZADD", keys.PENDING_ESCALATIONS, (created, escalation.escalation_id)),
                SideWrite("ZADD", keys.ALL_ESCALATIONS, (created, escalation.escalation_id)),
                SideWrite(
                    "ZADD",
                    keys.EXPIRING_ESCALATIONS,
                    (expires_at.timestamp(), escalation.escalation_id),
                ),
            ],
        )
    except StaleStateError:
        return
    # Counted where the opening's compare-and-set won: a redelivery loses it.
    metrics.ESCALATIONS_OPENED.labels(escalation.agent, escalation.kind).inc()
    automatic = auto_decision(escalation)
    if automatic is not None:
        # A shadow's escalations never wait for a human: decided at once, recorded as such.
        decide(rt, automatic, trusted=True)
        return
    log.warning(
        "escalation_pending",
        escalation_id=escalation.escalation_id,
        run_id=escalation.run_id,
        kind=escalation.kind,
        reason=escalation.reason,
    )


def check_decision(record: EscalationRecord, decision: Decision) -> None:
    if record.status != "pending":
        raise EscalationClosedError(decision.escalation_id, record.status, closed_why(record))
    if decision.verdict == Verdict.answer and not decision.answer:
        raise ValueError("an answer decision needs the answer text")
    allowed = record.escalation.verdicts()
    if decision.verdict not in allowed:
        raise DecisionRefusedError(
            f"escalation {decision.escalation_id!r} ({record.escalation.kind}) cannot be "
            f"decided with {decision.verdict}; it takes {', '.join(allowed)}"
        )
    if decision.arguments is not None and (
        decision.verdict != Verdict.approve or record.escalation.action is None
    ):
        raise DecisionRefusedError(
            f"escalation {decision.escalation_id!r} ({record.escalation.kind}) holds no tool "
            "call to approve with edited arguments: edit arguments only when approving a call"
        )
    if decision.verdict == Verdict.extend:
        budget = record.escalation.budget
        if budget is None or decision.extend_by is None:
            raise DecisionRefusedError("an extension needs the limit and the amount (--by)")
        if decision.limit is not None and decision.limit != budget.limit:
            raise DecisionRefusedError(
                f"escalation {decision.escalation_id!r} is about {budget.limit}, "
                f"not {decision.limit}: extend {budget.limit}"
            )


def extension_writes(rt: Runtime, record: EscalationRecord, decision: Decision) -> list[SideWrite]:
    """The budget raise a decision grants, as writes for the record's own commit: a
    decision that loses its compare-and-set raises nothing (invariant 3).

    Raises DecisionRefusedError past the ceiling, or when someone else extended it first.
    """
    budget = record.escalation.budget
    assert budget is not None and decision.extend_by is not None  # check_decision made sure
    granted, writes = rt.store.budgets.extension_writes(
        record.escalation.run_id,
        decision.escalation_id,
        limit=budget.limit,
        by=decision.extend_by,
        ceiling=budget.ceiling,
        extender=decision.extension_id(),
    )
    if not granted.granted:
        raise DecisionRefusedError(
            f"extension of {budget.limit} on {decision.escalation_id!r} refused: {granted.reason}"
        )
    return writes


def check_extension(rt: Runtime, record: EscalationRecord, decision: Decision) -> None:
    """Say whether a decision's budget extension would be granted, spending nothing: a
    client's check before it sends (the raise is written with the record's commit,
    ``extension_writes``).

    Raises DecisionRefusedError past the ceiling, or when someone else extended it first;
    the same decision again (a redelivery, a retried command) passes.
    """
    extension_writes(rt, record, decision)


def decide(rt: Runtime, decision: Decision, *, trusted: bool = False) -> EscalationRecord | None:
    """Record a human's decision once and resume the run; a second decision is refused.

    With TETHER_OPERATORS_FILE set, a decision not signed by a configured operator
    is refused and the refusal logged in the run (tether.escalation.operators); ``trusted``
    is for the decisions this service takes itself (a shadow's).
    """
    record, version = load(rt, decision.escalation_id)
    refused = None if trusted else operators.refusal(rt.settings, decision)
    if refused is not None:
        _log_refusal(
            rt,
            record,
            decision,
            refused.reason,
            operator=decision.operator,
            client_host=decision.client_host,
            client_pid=decision.client_pid,
        )
        deadletters.refuse(
            rt,
            DECIDE,
            {"decision": decision.model_dump(mode="json")},
            refused.code,
            refused.reason,
            run_id=record.escalation.run_id,
            step=_step(record.escalation),
        )
        return None
    if record.decision == decision:
        # Redelivered after the record committed (with its index and log entry):
        # only the resume may not have gone out.
        rt.send_resume(record.escalation, decision)
        return record
    try:
        check_decision(record, decision)
        # Spent by the record's commit below, with it or not at all.
        extension = (
            extension_writes(rt, record, decision) if decision.verdict == Verdict.extend else []
        )
    except (EscalationClosedError, DecisionRefusedError) as exc:
        # A late decision is no silent one: the run's log says it came, and why it
        # changed nothing.
        late = isinstance(exc, EscalationClosedError) and record.status in ("closed", "expired")
        _log_refusal(rt, record, decision, str(exc), in_run=late)
        return None
    try:
        edits.check_edit(rt, record, decision)
    except DecisionRefusedError as exc:
        # Its sender may not have loaded the agent to check: the run's log says why.
        _log_refusal(rt, record, decision, str(exc))
        return None
    decided = record.model_copy(update={"status": "decided", "decision": decision})
    logged = RunEvent(
        run_id=record.escalation.run_id,
        kind=EventKind.escalation_decided,
        step=_step(record.escalation),
        data={
            "escalation_id": decision.escalation_id,
            "verdict": decision.verdict,
            "by": decision.by,
            "at": decision.at.isoformat(),
            "reason": decision.reason,
            "answer": decision.answer,
            "arguments": decision.arguments,
            # Who, as verified against TETHER_OPERATORS_FILE (None where none is
            # configured: then only `by`, free text, names them), and from where.
            "operator": decision.operator if not trusted and rt.settings.operators_file else None,
            "client_host": decision.client_host,
            "client_pid": decision.client_pid,
            "recorded_at": utcnow().isoformat(),
            **(
                {"limit": decision.limit or _limit(record), "extend_by": decision.extend_by}
                if decision.verdict == Verdict.extend
                else {}
            ),
        },
    )
    try:
        _write_closed(
            rt,
            decided,
            version,
            logged,
            webhooks.appends(rt.settings, record.escalation, webhooks.DECIDED, decision),
            [
                SideWrite("ZREM", keys.PENDING_ESCALATIONS, (decision.escalation_id,)),
                SideWrite("ZREM", keys.EXPIRING_ESCALATIONS, (decision.escalation_id,)),
                # The tool's earned-autonomy record counts the decision with it, once.
                *autonomy.decision_writes(record.escalation, decision),
                *extension,
            ],
        )
    except StaleStateError:
        log.warning("decision_lost_race", escalation_id=decision.escalation_id)
        return None
    rt.send_resume(record.escalation, decision)
    return decided


def _log_refusal(
    rt: Runtime,
    record: EscalationRecord,
    decision: Decision,
    reason: str,
    *,
    in_run: bool = True,
    **details: object,
) -> None:
    """Log a refused decision, and (``in_run``) write it to its run's log with why."""
    log.warning("decision_refused", escalation_id=decision.escalation_id, reason=reason)
    if not in_run:
        return
    rt.store.log.append(
        record.escalation.run_id,
        EventKind.decision_refused,
        _step(record.escalation),
        escalation_id=decision.escalation_id,
        verdict=decision.verdict,
        by=decision.by,
        **details,
        reason=reason,
    )
    rt.store.flush()


def _limit(record: EscalationRecord) -> str | None:
    return record.escalation.budget.limit if record.escalation.budget else None


def close_writes(waits: Sequence[HumanWait], why: str, ttl_s: int) -> list[SideWrite]:
    """What closes a run's open escalations, for the commit that ends the run.

    The version moves on, so a decision or an opening in flight loses its
    compare-and-set and finds the escalation closed.
    """
    writes: list[SideWrite] = []
    for wait in waits:
        key = keys.escalation(wait.escalation_id)
        writes += [
            SideWrite("ZREM", keys.PENDING_ESCALATIONS, (wait.escalation_id,)),
            SideWrite("ZREM", keys.EXPIRING_ESCALATIONS, (wait.escalation_id,)),
            SideWrite("HSET", key, ("closed", why)),
            SideWrite("HINCRBY", key, ("version", 1)),
            SideWrite("EXPIRE", key, (ttl_s,)),
        ]
    return writes


def expire(rt: Runtime, escalation_id: str, now: datetime) -> EscalationRecord | None:
    """Record a pending escalation as expired once its expires_at has passed.

    Returns the record as it now stands (expired, or decided or closed by whoever
    came first: the compare-and-set lets one of them win), or None while it is not
    due. Its run is ended by the caller (tether.planner.reconcile.expire_escalations),
    which does so again if it finds the record expired and its run still waiting.
    """
    record, version = load(rt, escalation_id)
    if record.status != "pending":
        return record
    if record.expires_at is None or record.expires_at > now:
        return None
    expired = record.model_copy(update={"status": "expired"})
    e = record.escalation
    logged = RunEvent(
        run_id=e.run_id,
        kind=EventKind.escalation_expired,
        step=_step(e),
        data={
            "escalation_id": escalation_id,
            "kind": e.kind,
            "opened_at": e.created_at.isoformat(),
            "expires_at": record.expires_at.isoformat(),
            "recorded_at": utcnow().isoformat(),
        },
    )
    try:
        _write_closed(
            rt,
            expired,
            version,
            logged,
            webhooks.appends(rt.settings, e, webhooks.EXPIRED),
            # It stays in the expiring index until its run has ended (the caller's part).
            [SideWrite("ZREM", keys.PENDING_ESCALATIONS, (escalation_id,))],
        )
    except StaleStateError:  # decided, closed or expired by someone else meanwhile
        return load(rt, escalation_id)[0]
    metrics.ESCALATIONS_EXPIRED.labels(e.agent, e.kind).inc()
    log.warning("escalation_expired", escalation_id=escalation_id, run_id=e.run_id, kind=e.kind)
    return expired


def _write_closed(
    rt: Runtime,
    record: EscalationRecord,
    version: int,
    logged: RunEvent,
    notified: Sequence[Append],
    side_writes: Sequence[SideWrite],
) -> None:
    """Write a record that leaves pending (decided, expired) over ``version``, with the
    log entry and notification that describe it: all or nothing (StaleStateError)."""
    key = keys.escalation(record.escalation.escalation_id)
    rt.store.flush()  # what this task logged before comes first in the log
    rt.store.docs.write(
        key,
        record.model_dump_json(),
        version,
        expire=[key],
        ttl_s=rt.store.run_ttl_s,
        appends=[*log_appends(logged), *notified],
        side_writes=side_writes,
    )


def list_escalations(
    rt: Runtime, *, pending_only: bool = True, limit: int = 100
) -> list[EscalationRecord]:
    index = keys.PENDING_ESCALATIONS if pending_only else keys.ALL_ESCALATIONS
    ids = cast(list[str], rt.store.client.zrevrange(index, 0, limit - 1))
    records = []
    for escalation_id in ids:
        try:
            records.append(load(rt, escalation_id)[0])
        except UnknownEscalationError:
            # Decided escalations expire with their runs; the index forgets them here.
            rt.store.client.zrem(index, escalation_id)
    return records
