"""Re-driving runs whose next message was lost: the backstop behind the transport.

tether.transport.reliable keeps every message a worker takes, and gives a dead worker's
messages back within seconds; what it cannot see is a message lost with Redis
itself (a server restarted without its data). The committed state says what
comes next and every handler is safe to repeat, so a run with no commit for
``stalled_after_s`` gets that published again (outbox.redispatch); a run
waiting for a human only where one of its messages is missing. A run waiting
in a backlog, or whose tool calls a live executor holds, is not stalled. One
planner process at a time sweeps, under a lease.

The same sweep ends the runs whose escalations expired (``expire_escalations``):
only the planner writes run state, and an escalation ends by a decision or by
its own expiry, never by the run's budget (invariant 8).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import cast

from tether.errors import UnknownEscalationError, UnknownRunError
from tether.escalation import records
from tether.memory import threads
from tether.observability.logs import log
from tether.planner import admission
from tether.planner.lifecycle import finish
from tether.planner.outbox import redispatch
from tether.planner.ratelimited import Publisher
from tether.runtime import Runtime
from tether.store import deferred, keys
from tether.store.leases import Lease
from tether.store.state import RunError, RunState, RunStatus
from tether.transport.celery_app import PLAN_QUEUE, TOOLS_QUEUE
from tether.transport.wire import ErrorCategory, EventKind

SWEEP_LIMIT = 1000
EXPIRE_LIMIT = 100
# How long an escalation whose expiry failed waits before the sweep tries it again.
EXPIRY_RETRY_S = 30.0


def expire_escalations(
    rt: Runtime, now: float | None = None, limit: int = EXPIRE_LIMIT
) -> list[str]:
    """End the runs of escalations that expired undecided; returns the escalations expired.

    Each is first recorded as expired (tether.escalation.records.expire: a compare-and-set
    that a decision recorded before it wins), then its run ends ``rejected``
    (escalation_expired) if it still waits on it. It leaves the expiring index
    only then, so a sweeper that dies in between leaves the next sweep to finish.
    One that fails is logged and tried again ``EXPIRY_RETRY_S`` later, behind the
    others: one failure must not hold back every other expiry (invariant 8).
    """
    moment = time.time() if now is None else now
    at = datetime.fromtimestamp(moment, UTC)
    due = cast(
        list[str],
        rt.store.client.zrangebyscore(
            keys.EXPIRING_ESCALATIONS, "-inf", moment, start=0, num=limit
        ),
    )
    expired: list[str] = []
    for escalation_id in due:
        try:
            if _expire_one(rt, escalation_id, at):
                expired.append(escalation_id)
        except Exception:
            log.exception("escalation_expiry_failed", escalation_id=escalation_id)
            try:
                # Its record's expires_at still says when it expired: the index only
                # says when to look again.
                rt.store.client.zadd(
                    keys.EXPIRING_ESCALATIONS, {escalation_id: moment + EXPIRY_RETRY_S}, xx=True
                )
            except Exception:  # Redis away: the next sweep finds it where it was
                log.exception("escalation_expiry_failed", escalation_id=escalation_id)
    if expired:
        log.warning("escalations_expired", count=len(expired))
    return expired


def _expire_one(rt: Runtime, escalation_id: str, at: datetime) -> bool:
    """Expire one due escalation and end its run; False if it was not expired by this."""
    try:
        record = records.expire(rt, escalation_id, at)
    except UnknownEscalationError:  # expired with its run's data
        rt.store.client.zrem(keys.EXPIRING_ESCALATIONS, escalation_id)
        return False
    if record is None:
        return False  # its record says later than the index: the record holds
    ended = record.status == "expired"
    if ended:
        e = record.escalation
        waited = (record.expires_at or at) - e.created_at
        try:
            finish(
                rt,
                e.run_id,
                None,
                RunStatus.rejected,
                RunError(
                    category=ErrorCategory.escalation_expired,
                    message=f"escalation {escalation_id} ({e.kind}: {e.reason}) expired after "
                    f"{waited.total_seconds():.0f}s with no decision (the agent's "
                    "escalation_expiry_s, else TETHER_ESCALATION_EXPIRY_S); the run stopped "
                    "there and kept its partial result: resubmit the task with a new event "
                    "id, and decide within the expiry or raise it",
                ),
                decision="escalation_expired",
                awaiting=escalation_id,
            )
        except UnknownRunError:
            # Its run is gone (forgotten, or its data expired): nothing is left to end.
            log.warning(
                "escalation_expired_without_run", escalation_id=escalation_id, run_id=e.run_id
            )
            ended = False
    rt.store.client.zrem(keys.EXPIRING_ESCALATIONS, escalation_id)
    return ended


def sweep(
    rt: Runtime,
    stalled_after_s: float | None = None,
    max_redrives: int | None = None,
    limit: int = SWEEP_LIMIT,
) -> list[str]:
    """Publish again what each stalled run waits for; returns the runs re-driven.

    The thresholds default to the settings (TETHER_RUN_STALLED_AFTER_S, TETHER_MAX_REDRIVES).
    """
    stalled_after_s = (
        rt.settings.run_stalled_after_s if stalled_after_s is None else stalled_after_s
    )
    max_redrives = rt.settings.max_redrives if max_redrives is None else max_redrives
    redriven: list[str] = []
    backlog = _BacklogProbe(rt)
    for run_id in rt.store.indexes.stalled(time.time() - stalled_after_s, limit):
        # On a Redis Cluster: writes a commit left for other slots when its writer died.
        rt.store.settle_spill(run_id)
        state = rt.store.get(run_id)
        if state is None or state.terminal:
            rt.store.indexes.forget_active(run_id)
            continue
        rt.store.indexes.touch_active(run_id)  # the next look comes another stalled_after_s later
        busy = _busy(rt, state, backlog)
        if busy is not None:
            # Waiting its turn or being worked on is not stalling: no duplicate, no count.
            rt.store.log.append(
                run_id, EventKind.run_not_redriven, state.step, status=state.status, why=busy
            )
            continue
        if state.status != RunStatus.waiting_human and (
            rt.store.indexes.count_redrive(run_id, state.step) > max_redrives
        ):
            _give_up(rt, state, max_redrives)
            continue
        sent = redispatch(rt, state)
        if sent:
            rt.store.log.append(
                run_id,
                EventKind.run_redriven,
                state.step,
                status=state.status,
                sent=sent,
                reason=f"no commit for over {stalled_after_s:.0f}s; what its state waits for "
                "is published again",
            )
            redriven.append(run_id)
    # Threads whose next run was due but never started (a worker killed between a run's
    # terminal commit and the hand-over's publish).
    handed = threads.sweep(rt, time.time() - stalled_after_s, limit)
    if handed:
        log.warning("threads_handed_over", sent=handed)
    _admission_sweep(rt, stalled_after_s, backlog, limit)
    if redriven:
        log.warning("runs_redriven", count=len(redriven), stalled_after_s=stalled_after_s)
    return redriven


def _admission_sweep(
    rt: Runtime, stalled_after_s: float, backlog: _BacklogProbe, limit: int
) -> list[str]:
    """Slots of runs that ended as their worker died go back, and admitted events whose
    start message was lost are published again: lost when the planner's queue is empty
    and no run came within an interval, else after ``stalled_after_s``."""
    now, interval = time.time(), rt.settings.reconcile_interval_s
    lost_after = stalled_after_s if backlog.length(PLAN_QUEUE) else interval
    return admission.sweep(rt, now - interval, now - lost_after, limit)


class _BacklogProbe:
    """Queue lengths, read once per sweep."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.lengths: dict[str, int] = {}

    def length(self, queue: str) -> int:
        if queue not in self.lengths:
            with self.rt.celery.connection_for_read() as conn:
                try:
                    declared = conn.default_channel.queue_declare(queue, passive=True)
                except conn.channel_errors:  # an empty queue has no list in Redis
                    self.lengths[queue] = 0
                else:
                    self.lengths[queue] = int(declared.message_count)
        return self.lengths[queue]


def _busy(rt: Runtime, state: RunState, backlog: _BacklogProbe) -> str | None:
    """Why a run with no recent commit is not stalled, if it is not.

    Its next message may wait in a backlog on its queue (publishing another
    would only lengthen it), or a live executor may hold its tool call under
    a lease (a tool may run longer than the stall threshold).
    """
    if state.status == RunStatus.waiting_human:
        return None  # the outbox checks its waits one by one
    held = _held_back(rt, state)
    if held is not None:
        return held
    if state.status in (RunStatus.queued, RunStatus.running):
        queue = PLAN_QUEUE
    elif state.pending_actions:
        leases = rt.store.client.exists(
            *(keys.action_lock(a.action_id) for a in state.pending_actions)
        )
        if leases == len(state.pending_actions):
            return "every pending tool call is held by a live executor"
        queue = TOOLS_QUEUE
    else:
        return None
    waiting = backlog.length(queue)
    return f"{waiting} messages wait on {queue} before it" if waiting else None


def _held_back(rt: Runtime, state: RunState) -> str | None:
    """Why a run's next message is not lost but waits, deferred, for a rate limit."""
    if state.status in (RunStatus.queued, RunStatus.running):
        entries = [deferred.step_entry(state.run_id, state.step)]
    else:
        entries = [deferred.action_entry(state.run_id, a.action_id) for a in state.pending_actions]
    due = [at for at in deferred.waiting(rt.store.client, entries) if at is not None]
    if not due:
        return None
    return f"held back by a rate limit until {datetime.fromtimestamp(max(due), UTC):%H:%M:%S}"


def _give_up(rt: Runtime, state: RunState, max_redrives: int) -> None:
    finish(
        rt,
        state.run_id,
        state.step,
        RunStatus.failed,
        RunError(
            category=ErrorCategory.internal,
            message=f"run stalled at step {state.step} ({state.status}) through {max_redrives} "
            "re-drives: its messages keep failing rather than getting lost; see `tether dead "
            "list` for them, fix the cause, then resubmit with a new event id",
        ),
    )


class Reconciler:
    """A planner process's background sweeper; only the lease holder sweeps."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="tether-reconciler")
        self.publisher = Publisher(rt)

    def start(self) -> Reconciler:
        self.thread.start()
        # Every planner process publishes the messages rate limits held back, as they come due.
        self.publisher.start()
        return self

    def _loop(self) -> None:
        settings = self.rt.settings
        lease = Lease(self.rt.store.client, keys.RECONCILER_LEASE, ttl_s=30.0)
        held = False
        while not self.stop.wait(settings.reconcile_interval_s):
            try:
                held = lease.renew() if held else lease.acquire()
            except Exception as exc:  # Redis away: try again next round
                log.warning("reconcile_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            if not held:
                continue
            # Each on its own: a sweep that fails must not hold back the expiries.
            for part, job in (("sweep", sweep), ("expire_escalations", expire_escalations)):
                try:
                    job(self.rt)
                except Exception as exc:  # Redis away: try again next round
                    log.warning("reconcile_failed", part=part, error=f"{type(exc).__name__}: {exc}")
