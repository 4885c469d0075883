"""Writes that need no reply, sent together with the next Redis round trip.

Inside a task, the store holds back event-log appends, budget settlements and
the messages the task publishes (tether.transport.held_publish), and sends them in one
pipeline with whatever it sends next (a read, a commit, a reservation), and at
the latest when the task's body ends (TetherTask). Redis runs a pipeline's
commands in order, so nothing that comes after a held-back write can overtake
it. Outside a task
(the CLI, tests, the client API) nothing is held back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from tether.store import scripts

Build = Callable[[Pipeline], Any]
# What a held write's reply goes to once Redis has answered: (its place among the
# held writes, the callback).
Then = list[tuple[int, Callable[[Any], object]]]


class WriteBatch:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        # Per thread (and per greenlet under gevent): each task holds back its own writes.
        self._local = threading.local()

    def _held(self) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]] | None:
        held: list[tuple[str, tuple[Any, ...], dict[str, Any]]] | None = getattr(
            self._local, "held", None
        )
        return held

    @property
    def holding(self) -> bool:
        """Inside a task: a held write goes out with the next round trip."""
        return self._held() is not None

    @property
    def pending(self) -> int:
        return len(self._held() or ())

    def begin(self) -> None:
        """Hold back writes from here on (a task starts)."""
        self._local.held = []
        self._local.then = []

    def end(self) -> None:
        """Send what is held and stop holding back (a task ends, however it ended)."""
        try:
            self.flush()
        finally:
            self._local.held = None
            self._local.then = []

    def defer(self, command: str, *args: Any, **kwargs: Any) -> bool:
        """Hold ``command`` back for the next round trip; False when not holding back."""
        held = self._held()
        if held is None:
            return False
        held.append((command, args, kwargs))
        return True

    def defer_then(
        self, then: Callable[[Any], object], command: str, *args: Any, **kwargs: Any
    ) -> bool:
        """As ``defer``, and ``then`` gets the command's reply once Redis has answered it.

        Not called where the reply is an error or the round trip fails (then whether
        the command ran is unknown). It may hold back more writes: they go out too
        before the task ends.
        """
        held = self._held()
        if held is None:
            return False
        then_list: Then = self._local.then
        then_list.append((len(held), then))
        held.append((command, args, kwargs))
        return True

    def withdraw(self, match: Callable[[str, tuple[Any, ...]], bool]) -> tuple[Any, ...] | None:
        """Take back the first held write that ``match`` accepts (given its command and
        args), to be sent some other way; its args, or None where none is held.

        A write whose reply someone waits for (defer_then) is never taken back.
        """
        held = self._held()
        if not held:
            return None
        then: Then = self._local.then
        awaited = {place for place, _ in then}
        for place, (command, args, _) in enumerate(held):
            if place not in awaited and match(command, args):
                del held[place]
                self._local.then = [(p - 1 if p > place else p, f) for p, f in then]
                return args
        return None

    def flush(self) -> None:
        # A reply's callback may hold back writes of its own (defer_then).
        while self.pending:
            self.run(lambda pipe: None)

    def run(self, build: Build) -> list[Any]:
        """One round trip: what is held back, then what ``build`` adds; its replies only.

        The first error among the replies is raised, as the command alone would have.
        """
        held = self._held() or []
        then: Then = getattr(self._local, "then", None) or []
        pipe = self.client.pipeline(transaction=False)
        for command, args, kwargs in held:
            if command == "evalsha":
                pipe.execute_command("EVALSHA", *args)  # type: ignore[no-untyped-call]
            else:
                getattr(pipe, command)(*args, **kwargs)
        if held:
            self._local.held = []  # sent once, even if the round trip fails
            self._local.then = []
        build(pipe)
        sent = _queued(pipe)
        replies = pipe.execute(raise_on_error=False)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            replies = self._load_scripts(sent, replies)
        for place, callback in then:
            if not isinstance(replies[place], Exception):
                callback(replies[place])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return list(replies[len(held) :])

    def _load_scripts(
        self, sent: list[tuple[tuple[Any, ...], dict[str, Any]]], replies: list[Any]
    ) -> list[Any]:
        """Load every script (a restarted Redis has none; on a cluster, every primary)
        and send again the calls that found theirs missing: those did nothing, so each
        still runs once. A later call of the same pipeline may have run before them
        (another client loaded the scripts in between): a caller whose calls depend on
        one another checks for that (RunStore._commit)."""
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        scripts.load_all(self.client)
        pipe = self.client.pipeline(transaction=False)
        for i in missing:
            args, options = sent[i]
            pipe.execute_command(*args, **options)  # type: ignore[no-untyped-call]
        again = pipe.execute(raise_on_error=False)
        replies = list(replies)
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
        return replies


def _queued(pipe: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The commands ``pipe`` holds, as (args, options): a cluster pipeline keeps them
    in its execution strategy rather than a command stack."""
    strategy = getattr(pipe, "_execution_strategy", None)
    if strategy is not None:
        return [(command.args, command.options) for command in strategy.command_queue]
    return list(pipe.command_stack)
