"""A Redis lock that stays held while its holder is alive, and lapses soon after it dies.

redis-py's Lock gives the atomic acquire, release and re-acquire; one thread
per process renews every lease the process holds, so a lease's timeout can be
short (a dead holder frees it within seconds) however long the work under it
takes, and taking a lease starts no thread of its own. A lease can also be
taken and given back inside a pipeline, riding along with other commands.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from types import TracebackType
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import LockError
from redis.lock import Lock

from tether.store.batch import WriteBatch
from tether.store.scripts import Script

# redis-py's own release (Lock.release sends it too), held back with the next round trip.
_RELEASE = Script("redis.lock.Lock.LUA_RELEASE_SCRIPT", Lock.LUA_RELEASE_SCRIPT)


class Lease:
    def __init__(self, client: redis.Redis, key: str, ttl_s: float = 10.0) -> None:
        self.key = key
        self.lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)
        self.ttl_s = ttl_s
        self._token = uuid.uuid1().hex

    def acquire(self) -> bool:
        if not self.lock.do_acquire(self._token):
            return False
        self._held()
        return True

    def add_acquire(self, pipe: Pipeline) -> None:
        """Queue the attempt to take the lease; hand its reply to ``acquired``."""
        pipe.set(self.key, self._token, nx=True, px=int(self.ttl_s * 1000))

    def acquired(self, reply: Any) -> bool:
        if not reply:
            return False
        self._held()
        return True

    def _held(self) -> None:
        self.lock.local.token = self._token.encode()
        _keeper().add(self)

    def renew(self) -> bool:
        """Push the expiry out again; False once the lease has lapsed or passed to another."""
        try:
            self.lock.reacquire()
        except (LockError, redis.RedisError):
            return False
        return True

    def stop_renewing(self) -> None:
        _keeper().discard(self)

    def release(self, batch: WriteBatch | None = None) -> None:
        """Give the lease back; with ``batch``, along with its next round trip."""
        self.stop_renewing()
        if batch is not None and batch.defer("evalsha", _RELEASE.sha, 1, self.key, self._token):
            return
        # If it lapsed (Redis unreachable past its ttl) there is nothing left to free.
        with contextlib.suppress(LockError):
            self.lock.release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _Keeper:
    """The process's renewing thread: each held lease, every third of its ttl."""

    def __init__(self) -> None:
        self._due: dict[Lease, float] = {}
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tether-leases")
        self._thread.start()

    def add(self, lease: Lease) -> None:
        with self._wake:
            self._due[lease] = time.monotonic() + lease.ttl_s / 3
            self._wake.notify()

    def discard(self, lease: Lease) -> None:
        with self._wake:
            self._due.pop(lease, None)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [lease for lease, at in self._due.items() if at <= now]
                if not due:
                    # Woken early by a new lease, it only works out the next wait again.
                    self._wake.wait(min(self._due.values(), default=now + 60) - now)
                    continue
            for lease in due:
                renewed = lease.renew()
                with self._wake:
                    if lease in self._due:
                        if renewed:
                            self._due[lease] = time.monotonic() + lease.ttl_s / 3
                        else:
                            del self._due[lease]


_keepers: dict[int, _Keeper] = {}
_keepers_lock = threading.Lock()


def _keeper() -> _Keeper:
    # A thread does not survive fork: each process starts its own keeper.
    with _keepers_lock:
        keeper = _keepers.get(os.getpid())
        if keeper is None:
            keeper = _keepers[os.getpid()] = _Keeper()
        return keeper
