"""A task's published messages as writes it holds back, not round trips of their own.

Publishing through Celery costs a message two round trips to Redis of its own
(the queue's LPUSH and the task-sent event's PUBLISH), after a third that sends
what the task held back (tether.store.batch) so that the consumer finds it. Where the
broker is the run store's Redis, a message instead joins the held writes: kombu
builds it as ever (``Producer.batch``), and its commands go out with the task's
next round trip, after everything the task wrote before it (Redis runs a
pipeline's commands in order), and at the latest when the task body ends
(TetherTask). A worker that dies first has published nothing and acknowledged
nothing: its message is delivered again, and the handler publishes again, as
it would after dying between a commit and a publish.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tether.store.batch import WriteBatch

# Per thread, and per greenlet under gevent, as the held writes are.
_into: ContextVar[WriteBatch | None] = ContextVar("tether_held_publish", default=None)


@contextmanager
def publishing_into(writes: WriteBatch) -> Iterator[None]:
    """Inside, a ``Producer.batch()`` on a Tether channel holds its messages in ``writes``."""
    token = _into.set(writes)
    try:
        yield
    finally:
        _into.reset(token)


def target() -> WriteBatch | None:
    return _into.get()


class HeldPublishes:
    """kombu's publish-batch session (what ``Channel.create_publish_batch`` returns),
    handing the commands of each message to the held writes when the batch ends."""

    def __init__(self, channel: Any, writes: WriteBatch) -> None:
        self.channel = channel
        self.writes = writes
        self._commands: list[tuple[str, tuple[Any, ...]]] = []

    def publish(self, message: dict[str, Any], **kwargs: Any) -> Any:
        return self.channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        """A Redis command that delivers the message being routed (kombu's ``_put``)."""
        self._commands.append((name, args))

    def flush(self) -> None:
        commands, self._commands = self._commands, []
        if self.writes.holding:
            for name, args in commands:
                self.writes.defer(name, *args)
            return
        # Not inside a task after all: nothing would send them later.
        self.writes.run(lambda pipe: [getattr(pipe, name)(*args) for name, args in commands])

    def discard(self) -> None:
        self._commands = []

    def close(self) -> None:
        self._commands = []
