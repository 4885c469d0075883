"""One escalation record as it stands in Redis: what its writers and its notifications read.

Below both tether.escalation.records (which changes records) and
tether.escalation.webhooks (whose reminders read them), so neither imports the other
to read one.
"""

from __future__ import annotations

from tether.errors import UnknownEscalationError
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import EscalationRecord


def load(rt: Runtime, escalation_id: str) -> tuple[EscalationRecord, int]:
    doc, version, closed = rt.store.client.hmget(
        keys.escalation(escalation_id), ["doc", "version", "closed"]
    )
    if doc is None:
        raise UnknownEscalationError(escalation_id)
    record = EscalationRecord.model_validate_json(doc)
    if closed is not None and record.status == "pending":
        record = record.model_copy(update={"status": "closed", "closed_reason": str(closed)})
    return record, int(version or 0)
