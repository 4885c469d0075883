"""A Redis lock that stays held while its holder is alive, and lapses soon after it dies.

redis-py's Lock gives the atomic acquire, release and re-acquire; the lease
renews it in the background, so its timeout can be short (a dead holder
frees it within seconds) however long the work under it takes.
"""

from __future__ import annotations

import contextlib
import threading
from types import TracebackType

import redis
from redis.exceptions import LockError


class Lease:
    def __init__(self, client: redis.Redis, key: str, ttl_s: float = 10.0) -> None:
        self.lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)
        self.ttl_s = ttl_s
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, daemon=True, name=f"lease:{key}")

    def acquire(self) -> bool:
        if not self.lock.acquire():
            return False
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.lock.reacquire()
            except (LockError, redis.RedisError):
                return

    def release(self) -> None:
        self._stop.set()
        if self._renewer.is_alive():
            self._renewer.join()
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
