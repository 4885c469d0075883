"""Module-scoped stacks that stop in the background once their tests are done."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from tether.dev.stack import DevStack

# Stacks whose tests are done, still stopping on a thread of their own (see started_stack).
STOPPING: list[tuple[threading.Thread, list[BaseException]]] = []


@contextmanager
def started_stack(
    stack: DevStack, *, then: Iterable[Callable[[], object]] = ()
) -> Iterator[DevStack]:
    """Start ``stack``; when its tests are done, stop it while the next tests run.

    A stack's workers take seconds to drain and exit (a warm shutdown), idle
    time that module after module used to spend waiting. Each has its own
    Redis, so nothing of it reaches the tests that come next. ``stop()`` is
    the same as before; the session waits for every one at its end, and an
    error from one fails the session there. ``then`` (say, stopping an endpoint
    the workers report to) runs once the stack has stopped, on the same thread.
    """
    after = list(then)
    try:
        stack.__enter__()  # starts it; on a failed start it stops what started, and raises
    except BaseException:
        for stop_next in after:
            stop_next()
        raise
    try:
        yield stack
    finally:
        stop_in_background(stack, then=after)


def stop_in_background(stack: DevStack, *, then: Iterable[Callable[[], object]] = ()) -> None:
    """``stack.stop()``, then each of ``then``, on a thread the session waits for at its end."""
    errors: list[BaseException] = []
    steps = (stack.stop, *then)

    def stop() -> None:
        for step in steps:
            try:
                step()
            except BaseException as exc:  # reported when the session ends
                errors.append(exc)

    thread = threading.Thread(target=stop, name="stop-stack", daemon=True)
    thread.start()
    STOPPING.append((thread, errors))
