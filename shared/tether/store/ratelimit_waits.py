"""A message held back by a shared rate limit: deferred to its slot, and its wait
recorded where the run's timeline and stats read it."""

from __future__ import annotations

from tether.observability import metrics
from tether.store import deferred, keys
from tether.store.ratelimits import Slot
from tether.store.runs import RunStore
from tether.transport.wire import EventKind


def defer_to_slot(
    store: RunStore, entry: str, run_id: str, step: int, limit: str, slot: Slot, why: str
) -> None:
    """Defer ``entry`` (tether.store.deferred) to ``slot``; where the slot is new, put the
    wait in the run's event log (its timeline), its budget hash's ``rate_limited_ms``
    (which the run's ending counts into the stats rollups) and the metrics: a redelivery
    that finds its slot counts nothing twice (invariant 6)."""
    deferred.defer(store.client, entry, slot.start)
    if not slot.new:
        return
    waited = round(slot.wait_s, 3)
    store.log.append(
        run_id, EventKind.rate_limited, step, limit=limit, seconds=waited, until=slot.start, why=why
    )
    ms = round(slot.wait_s * 1000)
    if not store.batch.defer("hincrby", keys.budget(run_id), "rate_limited_ms", ms):
        store.client.hincrby(keys.budget(run_id), "rate_limited_ms", ms)
    metrics.rate_limited(limit, slot.wait_s)
