"""Readiness checks under gevent that ask the OS before they wait on gevent's hub.

redis-py checks every connection it takes from its pool for unread data, and
httpcore every pooled HTTP connection for a peer that hung up, each with
``select.poll()`` and a zero timeout. Under gevent's monkey-patching that poll
starts a watcher per descriptor and waits for the hub to run its loop once,
even at a zero timeout (gevent's own ``select.select`` asks the OS first; its
poll does not). In a gevent planner holding many model calls in flight those
two checks were about a tenth of its CPU (py-spy, bench/HISTORY.md).

``install`` makes ``select.poll`` a gevent poll that first asks the OS without
waiting, as ``select.select`` does: a zero timeout, or a descriptor already
ready, answers at once, with the OS's own flags (POLLHUP and POLLRDHUP too,
which redis-py reads to tell a closed peer from pending data); anything else
waits cooperatively on the hub as before. A worker calls it as it starts, when a
gevent pool has patched ``select``; elsewhere it does nothing.
"""

from __future__ import annotations

import select
from typing import Any

import gevent.select
from celery.signals import worker_init
from gevent import monkey

_os_poll: Any = monkey.get_original("select", "poll")
_DEFAULT_MASK = select.POLLIN | select.POLLPRI | select.POLLOUT


class ReadyFirstPoll(gevent.select.poll):  # type: ignore[misc]
    """gevent's poll, answered by the OS where no wait is needed."""

    def __init__(self) -> None:
        super().__init__()
        self._os = _os_poll()

    # gevent's modify() registers again, so this keeps both polls' masks alike.
    def register(self, fd: Any, eventmask: int = _DEFAULT_MASK) -> None:
        super().register(fd, eventmask)
        self._os.register(fd, eventmask)

    def unregister(self, fd: Any) -> None:
        super().unregister(fd)
        self._os.unregister(fd)

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        ready: list[tuple[int, int]] = self._os.poll(0)
        if ready or timeout == 0:
            return ready
        waited: list[tuple[int, int]] = super().poll(timeout)
        return waited


def install() -> None:
    """Make ``select.poll`` a ReadyFirstPoll where gevent has patched it; else nothing."""
    if monkey.is_object_patched("select", "poll"):
        select.poll = ReadyFirstPoll  # type: ignore[misc]


def install_at_worker_init() -> None:
    """``install`` in a worker once it starts (its pool patched by then, if gevent's)."""
    worker_init.connect(lambda **_: install(), weak=False)
