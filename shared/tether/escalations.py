"""Escalations: runs that wait for a human, kept pending until someone decides.

Records are versioned documents, so a decision is recorded once even when two
people (or two deliveries) decide at the same moment. A record, its indexes and
the log entry that describes the change are written in one step, as is closing
the escalations of a run that ends (``close_writes``, in the run's own commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from tether import autonomy, keys, metrics, notifications, operators
from tether.errors import (
    DecisionRefusedError,
    EscalationClosedError,
    StaleStateError,
    UnknownEscalationError,
)
from tether.messages import Decision, Escalation, RunEvent, Verdict, utcnow
from tether.runtime import Runtime
from tether.state import EscalationRecord, HumanWait
from tether.store import log_appends
from tether.telemetry import log
from tether.versioned import SideWrite


def load(rt: Runtime, escalation_id: str) -> tuple[EscalationRecord, int]:
    doc, version, closed = rt.store.client.hmget(
        keys.escalation(escalation_id), ["doc", "version", "closed"]
    )
    if doc is None:
        raise UnknownEscalationError(escalation_id)
    record = EscalationRecord.model_validate_json(doc)
    if closed is not None and record.status == "pending":
        record = record.model_copy(update={"status": "closed"})
    return record, int(version or 0)


def _step(escalation: Escalation) -> int:
    return escalation.action.step if escalation.action else 0


def open_escalation(rt: Runtime, escalation: Escalation) -> None:
    """Keep an escalation pending; a redelivered one, or one its run closed, is left as it is."""
    record = EscalationRecord(escalation=escalation)
    key = keys.escalation(escalation.escalation_id)
    created = escalation.created_at.timestamp()
    opened = RunEvent(
        run_id=escalation.run_id,
        kind="escalation_opened",
        step=_step(escalation),
        data={
            "escalation_id": escalation.escalation_id,
            "kind": escalation.kind,
            "reason": escalation.reason,
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
                *notifications.appends(rt.settings, escalation, notifications.OPENED),
            ],
            side_writes=[
                SideWrite("ZADD", keys.PENDING_ESCALATIONS, (created, escalation.escalation_id)),
                SideWrite("ZADD", keys.ALL_ESCALATIONS, (created, escalation.escalation_id)),
            ],
        )
    except StaleStateError:
        return
    # Counted where the opening's compare-and-set won: a redelivery loses it.
    metrics.ESCALATIONS_OPENED.labels(escalation.agent, escalation.kind).inc()
    from tether.evaluation.shadow import auto_decision  # it imports the run store

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
        raise EscalationClosedError(decision.escalation_id, record.status)
    if decision.verdict == Verdict.answer and not decision.answer:
        raise ValueError("an answer decision needs the answer text")
    allowed = record.escalation.verdicts()
    if decision.verdict not in allowed:
        raise DecisionRefusedError(
            f"escalation {decision.escalation_id!r} ({record.escalation.kind}) cannot be "
            f"decided with {decision.verdict}; it takes {', '.join(allowed)}"
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


def extend_budget(
    rt: Runtime, record: EscalationRecord, decision: Decision, *, check: bool = False
) -> None:
    """Spend a budget extension in budgets.lua, once per escalation and within its ceiling
    (``check``: only say whether it would be spent).

    Raises DecisionRefusedError past the ceiling, or when someone else extended it first;
    the same decision again (a redelivery, a retried command) is harmless.
    """
    budget = record.escalation.budget
    assert budget is not None and decision.extend_by is not None  # check_decision made sure
    granted = rt.store.budgets.extend(
        record.escalation.run_id,
        decision.escalation_id,
        limit=budget.limit,
        by=decision.extend_by,
        ceiling=budget.ceiling,
        extender=decision.extension_id(),
        check=check,
    )
    if not granted.granted:
        raise DecisionRefusedError(
            f"extension of {budget.limit} on {decision.escalation_id!r} refused: {granted.reason}"
        )


def decide(rt: Runtime, decision: Decision, *, trusted: bool = False) -> EscalationRecord | None:
    """Record a human's decision once and resume the run; a second decision is refused.

    With TETHER_OPERATORS_FILE set, a decision not signed by a configured operator
    is refused and the refusal logged in the run (tether.operators); ``trusted``
    is for the decisions this service takes itself (a shadow's).
    """
    record, version = load(rt, decision.escalation_id)
    refused = None if trusted else operators.refusal(rt.settings, decision)
    if refused is not None:
        log.warning("decision_refused", escalation_id=decision.escalation_id, reason=refused)
        rt.store.log(
            record.escalation.run_id,
            "decision_refused",
            _step(record.escalation),
            escalation_id=decision.escalation_id,
            verdict=decision.verdict,
            by=decision.by,
            operator=decision.operator,
            client_host=decision.client_host,
            client_pid=decision.client_pid,
            reason=refused,
        )
        rt.store.flush()
        return None
    if record.decision == decision:
        # Redelivered after the record committed (with its index and log entry):
        # only the resume may not have gone out.
        rt.send_resume(record.escalation, decision)
        return record
    try:
        check_decision(record, decision)
        if decision.verdict == Verdict.extend:
            # Before the record: the budget script decides which extension is spent.
            extend_budget(rt, record, decision)
    except (EscalationClosedError, DecisionRefusedError) as exc:
        log.warning("decision_refused", escalation_id=decision.escalation_id, reason=str(exc))
        return None
    decided = record.model_copy(update={"status": "decided", "decision": decision})
    key = keys.escalation(decision.escalation_id)
    logged = RunEvent(
        run_id=record.escalation.run_id,
        kind="escalation_decided",
        step=_step(record.escalation),
        data={
            "escalation_id": decision.escalation_id,
            "verdict": decision.verdict,
            "by": decision.by,
            "at": decision.at.isoformat(),
            "reason": decision.reason,
            "answer": decision.answer,
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
    rt.store.flush()
    try:
        rt.store.docs.write(
            key,
            decided.model_dump_json(),
            version,
            expire=[key],
            ttl_s=rt.store.run_ttl_s,
            appends=[
                *log_appends(logged),
                *notifications.appends(
                    rt.settings, record.escalation, notifications.DECIDED, decision
                ),
            ],
            side_writes=[
                SideWrite("ZREM", keys.PENDING_ESCALATIONS, (decision.escalation_id,)),
                # The tool's earned-autonomy record counts the decision with it, once.
                *autonomy.decision_writes(record.escalation, decision),
            ],
        )
    except StaleStateError:
        log.warning("decision_lost_race", escalation_id=decision.escalation_id)
        return None
    rt.send_resume(record.escalation, decision)
    return decided


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
            SideWrite("HSET", key, ("closed", why)),
            SideWrite("HINCRBY", key, ("version", 1)),
            SideWrite("EXPIRE", key, (ttl_s,)),
        ]
    return writes


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
