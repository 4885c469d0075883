"""Re-driving runs whose next message was lost.

acks_late and reject-on-worker-lost cover a message from the moment a worker
has recorded it as unacknowledged. Before that there is a window: kombu's
Redis transport pops a message (BRPOP) and only then records it, so a worker
killed, or a broker restarted, in between loses the message, and the run it
belonged to waits for ever. The committed state says what comes next and every
handler is safe to repeat, so a run with no commit for ``stalled_after_s`` gets
that published again (outbox.redispatch). One planner process at a time
sweeps, under a lease.
"""

from __future__ import annotations

import threading
import time

from tether import keys
from tether.leases import Lease
from tether.planner.outbox import redispatch
from tether.runtime import Runtime
from tether.telemetry import log

SWEEP_LIMIT = 1000


def sweep(rt: Runtime, stalled_after_s: float, limit: int = SWEEP_LIMIT) -> list[str]:
    """Publish again what each stalled run waits for; returns the runs re-driven."""
    redriven: list[str] = []
    for run_id in rt.store.stalled(time.time() - stalled_after_s, limit):
        state = rt.store.get(run_id)
        if state is None or state.terminal:
            rt.store.forget_active(run_id)
            continue
        rt.store.log(
            run_id,
            "run_redriven",
            state.step,
            status=state.status,
            reason=f"no commit for over {stalled_after_s:.0f}s; what its state waits for "
            "is published again",
        )
        redispatch(rt, state)
        rt.store.touch_active(run_id)  # the next look comes another stalled_after_s later
        redriven.append(run_id)
    if redriven:
        log.warning("runs_redriven", count=len(redriven), stalled_after_s=stalled_after_s)
    return redriven


class Reconciler:
    """A planner process's background sweeper; only the lease holder sweeps."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="tether-reconciler")

    def start(self) -> Reconciler:
        self.thread.start()
        return self

    def _loop(self) -> None:
        settings = self.rt.settings
        lease = Lease(self.rt.store.client, keys.RECONCILER_LEASE, ttl_s=30.0)
        held = False
        while not self.stop.wait(settings.reconcile_interval_s):
            try:
                held = lease.renew() if held else lease.acquire()
                if held:
                    sweep(self.rt, settings.run_stalled_after_s)
            except Exception as exc:  # Redis away: try again next round
                log.warning("reconcile_failed", error=f"{type(exc).__name__}: {exc}")
