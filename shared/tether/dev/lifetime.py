"""Child processes that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def die_with_parent() -> Callable[[], None] | None:
    """A Popen preexec_fn: the kernel sends SIGTERM when the parent dies (Linux).

    The kernel ties this to the thread that started the child, not its process,
    so it is only used from the main thread: a child started from a helper
    thread would be stopped as soon as that thread ended.
    """
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        return _die_with_parent
    return None


def interrupt_on_terminate() -> None:
    """Treat SIGTERM and SIGHUP like Ctrl-C, so `with` blocks unwind and stop children."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGHUP, raise_interrupt)
    # Started from a shell's background job (`tether dev &`), a process inherits SIGINT
    # ignored, and Python then leaves it so: `kill -INT` would do nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
