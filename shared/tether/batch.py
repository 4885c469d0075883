"""Writes that need no reply, sent together with the next Redis round trip.

Inside a task, the store holds back event-log appends, budget settlements and
the messages the task publishes (tether.held_publish), and sends them in one
pipeline with whatever it sends next (a read, a commit, a reservation), and at
the latest when the task's body ends (TetherTask). Redis runs a pipeline's
commands in order, so nothing that comes after a held-back write can overtake
it. Outside a task
(the CLI, tests, the client API) nothing is held back.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

Build = Callable[[Pipeline], Any]
# Every Script, by SHA1: what a Redis that lost its script cache is sent again.
_SCRIPTS: dict[str, str] = {}


class Script:
    """A Lua script sent by its SHA1 (EVALSHA), so its text does not cross the wire
    with every call; WriteBatch loads it where Redis does not have it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        _SCRIPTS[self.sha] = text

    def add(self, pipe: Pipeline, numkeys: int, *args: Any) -> None:
        # Not pipe.evalsha: a Redis Cluster pipeline refuses that, and routes this by its keys.
        pipe.execute_command("EVALSHA", self.sha, numkeys, *args)  # type: ignore[no-untyped-call]


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

    def end(self) -> None:
        """Send what is held and stop holding back (a task ends, however it ended)."""
        try:
            self.flush()
        finally:
            self._local.held = None

    def defer(self, command: str, *args: Any, **kwargs: Any) -> bool:
        """Hold ``command`` back for the next round trip; False when not holding back."""
        held = self._held()
        if held is None:
            return False
        held.append((command, args, kwargs))
        return True

    def flush(self) -> None:
        if self.pending:
            self.run(lambda pipe: None)

    def run(self, build: Build) -> list[Any]:
        """One round trip: what is held back, then what ``build`` adds; its replies only.

        The first error among the replies is raised, as the command alone would have.
        """
        held = self._held() or []
        pipe = self.client.pipeline(transaction=False)
        for command, args, kwargs in held:
            if command == "evalsha":
                pipe.execute_command("EVALSHA", *args)  # type: ignore[no-untyped-call]
            else:
                getattr(pipe, command)(*args, **kwargs)
        if held:
            self._local.held = []  # sent once, even if the round trip fails
        build(pipe)
        sent = _queued(pipe)
        replies = pipe.execute(raise_on_error=False)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            replies = self._load_scripts(sent, replies)
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
        for text in _SCRIPTS.values():
            self.client.script_load(text)
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
