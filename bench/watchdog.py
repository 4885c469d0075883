"""A watchdog that kills what a harness started once the harness is gone, however it went.

A worker the chaos harness restarts is started from its chaos thread, and the
kernel ties PR_SET_PDEATHSIG to the thread that forked, not the process: such
a child would be signalled when that thread ended, so it gets no parent-death
signal at all (tether.dev.lifetime.die_with_parent), and started in its own session
it is out of reach of a signal to the harness's process group. A SIGKILLed
harness would leave it running.

So the harness starts this process first and names to it, over a pipe, each
process it starts (``+PID``) and each it has reaped itself (``-PID``). The
pipe closes when the harness exits, whatever killed it; the watchdog then
SIGKILLs every process still named, and its process group (a worker's pool
children). SIGKILL rather than the SIGTERM a parent-death signal sends: a
worker the chaos has SIGSTOPped would hold a SIGTERM pending for ever, and a
worker's warm shutdown waits for its tasks.

    python -m bench.watchdog    # reads +PID / -PID lines on stdin
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading


def main() -> int:
    # Ctrl-C in the harness's terminal is the harness's to handle; the watchdog
    # acts once the harness has gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    named: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if line[:1] == "+":
            named.add(int(line[1:]))
        elif line[:1] == "-":
            named.discard(int(line[1:]))
    for pid in sorted(named):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # a worker leads its own group, pool and all
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # a redis-server shares the harness's group
    return 0


class Watchdog:
    """The harness's side: start it first, ``watch`` each process it starts, close it last.

    ``close`` forgets the processes already reaped (their ids may be reused) and
    lets the watchdog kill any still running.
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.watchdog"],
            stdin=subprocess.PIPE,
            # Its own session: a signal to the harness's group leaves it to clean up.
            start_new_session=True,
        )
        self._watched: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def _send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{line}\n".encode())
        self.process.stdin.flush()

    def watch(self, *processes: subprocess.Popen[bytes] | None) -> None:
        with self._lock:
            for process in processes:
                if process is not None and process.pid not in self._watched:
                    self._watched[process.pid] = process
                    self._send(f"+{process.pid}")

    def forget(self, process: subprocess.Popen[bytes]) -> None:
        """``process`` has been reaped: its id may name another process soon."""
        with self._lock:
            if self._watched.pop(process.pid, None) is not None:
                self._send(f"-{process.pid}")

    def close(self) -> None:
        with self._lock:
            for pid, process in list(self._watched.items()):
                if process.poll() is not None:
                    del self._watched[pid]
                    self._send(f"-{pid}")
            assert self.process.stdin is not None
            self.process.stdin.close()
        self.process.wait()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    sys.exit(main())
