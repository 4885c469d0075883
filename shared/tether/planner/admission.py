"""Fairness and priority: whose runs start while runs wait for capacity.

An event names its tenant in a metadata field (TETHER_TENANT_KEY, "tenant"; without
it, "default") and its ``priority`` (interactive or batch). With a cap set, runs in
flight (started and not ended) per tenant (TETHER_TENANT_MAX_RUNS,
TETHER_TENANT_DEFAULT_MAX_RUNS) or in all (TETHER_MAX_RUNS_IN_FLIGHT), intake
admits an event by one script (admission.lua) that checks the caps and counts the
run together. An event over a cap waits in Redis, holding no worker, in the order
that is fair: tenants take turns (the one served longest ago first, among those
under their cap), interactive events before batch ones, except that every
TETHER_BATCH_EVERY-th admission goes to a waiting batch event, so neither a
tenant's backlog nor interactive traffic starves anyone.

When a run ends, its terminal commit is followed by ``release``: its slot is given
back once, and the events that may start now are admitted and published again (a
start message: intake creates a run once per event id). A worker killed in
between leaves the slot with an ended run, or an admitted event with no run; the
reconciler's ``sweep`` gives back the one and publishes the other again. Waiting is
idempotent per event id: a redelivered start message waits once, and one whose
slot was given back already counts nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

from tether.config import Settings
from tether.observability import metrics
from tether.observability.logs import log
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.scripts import Script
from tether.transport.wire import Priority, TaskEvent

ADMISSION = Script.load("tether.planner", "admission.lua")
DEFAULT_TENANT = "default"
# The metric label of tenants not named in the settings: their number stays bounded.
OTHER_TENANT = "other"
# Admissions from the waiting events in one script call: bounds the script's time.
MOST_PER_CALL = 100
# How long a given-back slot is remembered. A start message delivered again after its
# run ended must not take a slot it would never give back; intake sees most such copies
# by the run itself, and this covers a copy that checked just before the run existed.
DONE_KEEP_S = 600
WAITS, STARTS, ENDED = 0, 1, 2
_KEYS = [
    keys.ADMISSION_EVENTS,
    keys.ADMISSION_WAITING_INTERACTIVE,
    keys.ADMISSION_WAITING_BATCH,
    keys.ADMISSION_TENANTS_INTERACTIVE,
    keys.ADMISSION_TENANTS_BATCH,
    keys.ADMISSION_RUNNING,
    keys.ADMISSION_COUNTS,
    keys.ADMISSION_ADMITTED,
    keys.ADMISSION_DONE,
    keys.ADMISSION_COUNTERS,
    keys.ADMISSION_SINCE,
]


@dataclass(frozen=True)
class AdmissionVerdict:
    """Whether an event's run may start now, and since when it has been waiting for it
    (its first publish, as intake first saw it)."""

    starts: bool
    since: float


def enabled(settings: Settings) -> bool:
    """Whether any cap is set; without one, no event waits and intake skips the script."""
    return bool(
        settings.max_runs_in_flight or settings.tenant_default_max_runs or settings.tenant_max_runs
    )


def tenant_of(settings: Settings, event: TaskEvent) -> str:
    """The event's tenant: its metadata field TETHER_TENANT_KEY, else "default".

    Control characters are replaced, since the waiting set orders members by bytes,
    with NUL between the tenant and the rest.
    """
    value = event.metadata.get(settings.tenant_key)
    if value is None or str(value).strip() == "":
        return DEFAULT_TENANT
    return "".join(c if c.isprintable() else "?" for c in str(value).strip())[:200]


def metric_tenant(settings: Settings, tenant: str) -> str:
    """The tenant as metric labels name it: those the settings name, else "other"."""
    named = {DEFAULT_TENANT, *settings.tenant_max_runs, *settings.metric_tenants}
    return tenant if tenant in named else OTHER_TENANT


def admit(rt: Runtime, event: TaskEvent) -> AdmissionVerdict:
    """Admit ``event`` under the caps, or have it wait; publishes the others admitted."""
    published = _published_at()
    if not enabled(rt.settings) or rt.store.status(run_id_for(event.event_id)) is not None:
        return AdmissionVerdict(starts=True, since=published)
    verdict, since, *others = _call(
        rt,
        "admit",
        event.event_id,
        tenant_of(rt.settings, event),
        event.priority.value,
        event.model_dump_json(),
        published,
    )
    _publish(rt, others)
    if int(verdict) == WAITS:
        log.info(
            "event_waits_for_capacity",
            event_id=event.event_id,
            tenant=tenant_of(rt.settings, event),
            priority=event.priority.value,
        )
    return AdmissionVerdict(starts=int(verdict) != WAITS, since=float(since or published))


def started(rt: Runtime, event: TaskEvent, verdict: AdmissionVerdict) -> None:
    """The run was created, once: its wait since its first publish counts now."""
    metrics.run_queue_wait(
        metric_tenant(rt.settings, tenant_of(rt.settings, event)),
        event.priority.value,
        max(0.0, time.time() - verdict.since),
    )


def release(rt: Runtime, event_id: str) -> list[str]:
    """Give back the slot of ``event_id``'s run (it ended, or its event was rejected)
    and publish the events that may start now; returns what was published."""
    if not enabled(rt.settings):
        return []
    _, _, *admitted = _call(rt, "release", event_id)
    return _publish(rt, admitted)


def sweep(rt: Runtime, checked_before: float, lost_before: float, limit: int = 1000) -> list[str]:
    """The reconciler's part: give back the slots of ended runs whose release a dead
    worker missed, publish again the admitted events with no run since ``lost_before``,
    then admit what the caps allow (also after the caps were lifted)."""
    client = rt.store.client
    due = cast(
        list[tuple[str, float]],
        client.zrangebyscore(
            keys.ADMISSION_ADMITTED, "-inf", checked_before, start=0, num=limit, withscores=True
        ),
    )
    sent: list[str] = []
    for event_id, admitted_at in due:
        status = rt.store.status(run_id_for(event_id))
        if status is not None and status.terminal:
            _, _, *admitted = _call(rt, "release", event_id)
            sent += _publish(rt, admitted)
            continue
        if status is None:
            if admitted_at >= lost_before:
                continue  # its start message may still wait on the planner's queue
            raw = cast(str | None, client.hget(keys.ADMISSION_EVENTS, event_id))
            if raw is not None:
                sent += _publish(rt, [raw])
        # Looked at now: the next look comes after another interval.
        client.zadd(keys.ADMISSION_ADMITTED, {event_id: time.time()}, xx=True)
    _, _, *admitted = _call(rt, "next")
    sent += _publish(rt, admitted)
    if sent:
        log.warning("admission_swept", sent=sent)
    return sent


def waiting(rt: Runtime) -> dict[str, int]:
    """Events waiting for capacity, by priority."""
    pipe = rt.store.client.pipeline(transaction=False)
    pipe.zcard(keys.ADMISSION_WAITING_INTERACTIVE)
    pipe.zcard(keys.ADMISSION_WAITING_BATCH)
    interactive, batch = pipe.execute()
    return {Priority.interactive.value: int(interactive), Priority.batch.value: int(batch)}


def in_flight(rt: Runtime) -> dict[str, int]:
    """Runs in flight by tenant, as admission counts them."""
    counts = cast(dict[str, str], rt.store.client.hgetall(keys.ADMISSION_COUNTS))
    return {tenant: int(n) for tenant, n in counts.items()}


def _call(rt: Runtime, op: str, *args: Any) -> list[Any]:
    settings = rt.settings
    return cast(
        list[Any],
        ADMISSION.run(
            rt.store.client,
            keys=_KEYS,
            args=[
                op,
                time.time(),
                settings.max_runs_in_flight or -1,
                settings.tenant_default_max_runs or -1,
                json.dumps(settings.tenant_max_runs),
                settings.batch_every,
                MOST_PER_CALL,
                DONE_KEEP_S,
                *args,
            ],
        ),
    )


def _publish(rt: Runtime, raw_events: list[Any]) -> list[str]:
    sent: list[str] = []
    for raw in raw_events:
        if raw is None:
            continue  # given back meanwhile by a sweep: nothing left to start
        event = TaskEvent.model_validate_json(raw)
        rt.publish_event(event)
        sent.append(f"event {event.event_id}")
    return sent


def _published_at() -> float:
    """When the start message being handled was published (Runtime._send stamps it)."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    headers = getattr(request, "__dict__", {}) if request is not None else {}
    try:
        return float(headers.get(metrics.PUBLISHED_AT_HEADER) or time.time())
    except (TypeError, ValueError):
        return time.time()
