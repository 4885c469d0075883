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
it would after dying between a commit and a publish. Inside ``capturing()`` its
commands become side writes of a commit instead (tether.store.versioned), sent by
the commit's own script only if it wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from tether.errors import TetherError
from tether.store.versioned import PUBLISH, SideWrite


class HeldWrites(Protocol):
    """Where a message's commands go: a task's held writes (tether.store.batch), or a
    commit's side writes (``Captured``)."""

    @property
    def holding(self) -> bool: ...

    def defer(self, command: str, *args: Any) -> bool: ...

    def run(self, build: Any) -> list[Any]: ...


# Per thread, and per greenlet under gevent, as the held writes are.
_into: ContextVar[HeldWrites | None] = ContextVar("tether_held_publish", default=None)
_captured: ContextVar[Captured | None] = ContextVar("tether_captured_publish", default=None)


@contextmanager
def publishing_into(writes: HeldWrites) -> Iterator[None]:
    """Inside, a ``Producer.batch()`` on a Tether channel holds its messages in ``writes``."""
    token = _into.set(writes)
    try:
        yield
    finally:
        _into.reset(token)


def target() -> HeldWrites | None:
    return _into.get()


class Captured:
    """The messages published inside ``capturing()``, as side writes of a commit
    (versioned.lua): they go out only if the commit wins, in its own script."""

    holding = True

    def __init__(self) -> None:
        self.side_writes: list[SideWrite] = []

    def defer(self, command: str, *args: Any) -> bool:
        name = command.upper()
        # kombu's Redis channel delivers a message with LPUSH (its queue) and PUBLISH
        # (fanout: task events); PEXPIRE only for queues with an expiry, which Tether's lack.
        if name not in ("LPUSH", PUBLISH):
            raise TetherError(
                f"a message published inside a commit asked for {name} {args[:1]}, which a "
                "commit cannot send; publish it after the commit instead"
            )
        key, *rest = args
        self.side_writes.append(SideWrite(name, str(key), tuple(rest)))
        return True

    def run(self, build: Any) -> list[Any]:
        raise TetherError("a captured publish has no round trip of its own")


@contextmanager
def capturing() -> Iterator[Captured]:
    """Inside, what a Runtime publishes (where the broker is the run store's Redis) is
    captured as side writes for a commit instead of being sent."""
    captured = Captured()
    token = _captured.set(captured)
    try:
        yield captured
    finally:
        _captured.reset(token)


def captured() -> Captured | None:
    return _captured.get()


class HeldPublishes:
    """kombu's publish-batch session (what ``Channel.create_publish_batch`` returns),
    handing the commands of each message to the held writes when the batch ends."""

    def __init__(self, channel: Any, writes: HeldWrites) -> None:
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
