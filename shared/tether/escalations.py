"""Escalations: runs that wait for a human, kept pending until someone decides.

Records are versioned documents, so a decision is recorded once even when two
people (or two deliveries) decide at the same moment.
"""

from __future__ import annotations

from typing import cast

from tether import keys
from tether.errors import EscalationClosedError, StaleStateError, UnknownEscalationError
from tether.messages import Decision, Escalation, Verdict
from tether.runtime import Runtime
from tether.state import EscalationRecord
from tether.telemetry import log


def load(rt: Runtime, escalation_id: str) -> tuple[EscalationRecord, int]:
    found = rt.store.docs.read(keys.escalation(escalation_id))
    if found is None:
        raise UnknownEscalationError(escalation_id)
    doc, version = found
    return EscalationRecord.model_validate_json(doc), version


def open_escalation(rt: Runtime, escalation: Escalation) -> None:
    """Keep an escalation pending; a redelivered one is left as it is."""
    record = EscalationRecord(escalation=escalation)
    try:
        rt.store.docs.write(keys.escalation(escalation.escalation_id), record.model_dump_json(), 0)
    except StaleStateError:
        return
    created = escalation.created_at.timestamp()
    rt.store.client.zadd(keys.PENDING_ESCALATIONS, {escalation.escalation_id: created})
    rt.store.client.zadd(keys.ALL_ESCALATIONS, {escalation.escalation_id: created})
    step = escalation.action.step if escalation.action else 0
    rt.store.log(
        escalation.run_id,
        "escalation_opened",
        step,
        escalation_id=escalation.escalation_id,
        kind=escalation.kind,
        reason=escalation.reason,
    )
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


def decide(rt: Runtime, decision: Decision) -> EscalationRecord | None:
    """Record a human's decision once and resume the run; a second decision is refused."""
    record, version = load(rt, decision.escalation_id)
    if record.decision == decision:
        # Redelivered after the record committed: the resume may not have gone out.
        rt.send_resume(record.escalation, decision)
        return record
    try:
        check_decision(record, decision)
    except EscalationClosedError as exc:
        log.warning("decision_refused", escalation_id=decision.escalation_id, reason=str(exc))
        return None
    decided = record.model_copy(update={"status": "decided", "decision": decision})
    try:
        rt.store.docs.write(
            keys.escalation(decision.escalation_id), decided.model_dump_json(), version
        )
    except StaleStateError:
        log.warning("decision_lost_race", escalation_id=decision.escalation_id)
        return None
    pipe = rt.store.client.pipeline(transaction=False)
    pipe.zrem(keys.PENDING_ESCALATIONS, decision.escalation_id)
    pipe.expire(keys.escalation(decision.escalation_id), rt.store.run_ttl_s)
    pipe.execute()
    action = record.escalation.action
    rt.store.log(
        record.escalation.run_id,
        "escalation_decided",
        action.step if action else 0,
        escalation_id=decision.escalation_id,
        verdict=decision.verdict,
        by=decision.by,
        at=decision.at.isoformat(),
        reason=decision.reason,
        answer=decision.answer,
    )
    rt.send_resume(record.escalation, decision)
    return decided


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
