"""A run's growing lists, its messages and completed actions, stored beside its document.

They live in Redis lists of their own (keys.run_messages, keys.run_completed) that a
commit appends to, so what a commit writes does not grow with the run. The document
counts the entries it covers, so a reader that meets a commit in between ignores
entries that came after; a ``generation`` counts how often a list was written anew
rather than appended to, so a commit that lost can tell whether the tails it got back
are an append to what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from tether.store import keys
from tether.store.state import ChatMessage, RunState, StoredLists
from tether.store.versioned import Lost, SideWrite
from tether.transport.wire import Observation

_MESSAGES = TypeAdapter(list[ChatMessage])
_OBSERVATIONS = TypeAdapter(list[Observation])
#: Hash fields beside the run's document: how many of its lists' entries it counts, and
#: how often a list was written anew.
LISTED = ["messages", "completed", "generation"]


def with_lists(
    state: RunState, listed: Sequence[str | None], messages: list[str], completed: list[str]
) -> RunState:
    """``state`` (read from its document) with the lists' entries the document counts."""
    n_messages, n_completed, generation = listed
    if n_messages is None:
        # Written before the lists existed: the document holds all, the lists nothing yet.
        state._stored = StoredLists([], [], 0)
        return state
    whole = state.model_copy(
        update={
            "messages": _MESSAGES.validate_json(_array(messages[: int(n_messages)])),
            "completed_actions": _OBSERVATIONS.validate_json(
                _array(completed[: int(n_completed or 0)])
            ),
        }
    )
    return stored(whole, int(generation or 0))


def stored(state: RunState, generation: int) -> RunState:
    """``state``, marked as holding what the store holds of its lists."""
    state._stored = StoredLists(state.messages, state.completed_actions, generation)
    return state


def tails(state: RunState) -> list[tuple[str, int]]:
    """Where the lists go on past what ``state`` holds: a commit that loses gets what
    was appended since, to catch up without a read."""
    held = state._stored
    if held is None:
        return []
    return [
        (keys.run_messages(state.run_id), len(held.messages)),
        (keys.run_completed(state.run_id), len(held.completed)),
    ]


def winner(loser: RunState, lost: Lost | None) -> RunState | None:
    """The state that won over ``loser``, from the losing commit's reply: the winner's
    document, and ``loser``'s lists with what was appended since. None when that
    cannot be told without a read (the lists were written anew, or it is not known
    what the loser held)."""
    held = loser._stored
    if (
        lost is None
        or held is None
        or held.generation < 0
        or lost.generation != held.generation
        or len(lost.tails) != 2
    ):
        return None
    current = RunState.model_validate_json(lost.doc)
    if current.messages or current.completed_actions:
        return None  # written before the lists existed: its document holds them
    messages, completed = lost.tails
    won = current.model_copy(
        update={
            "messages": [*held.messages, *_MESSAGES.validate_json(_array(messages))],
            "completed_actions": [
                *held.completed,
                *_OBSERVATIONS.validate_json(_array(completed)),
            ],
            "version": lost.version,
        }
    )
    return stored(won, lost.generation)


def list_writes(state: RunState, expected_version: int) -> tuple[list[SideWrite], int]:
    """What brings the run's message and action lists from what is stored to ``state``'s,
    and the generation of the lists it leaves."""
    held = state._stored
    if held is None and expected_version == 0:
        held = StoredLists([], [], 0)  # a new run: nothing is stored yet
    writes: list[SideWrite] = []
    lists: tuple[tuple[str, Sequence[ChatMessage | Observation], Sequence[Any] | None], ...] = (
        (keys.run_messages(state.run_id), state.messages, held.messages if held else None),
        (
            keys.run_completed(state.run_id),
            state.completed_actions,
            held.completed if held else None,
        ),
    )
    rewritten = False
    for key, items, before in lists:
        added = _appended(items, before)
        if added is None:
            # Not an append to what is stored, or what is stored is not known: write anew.
            writes.append(SideWrite("DEL", key, ()))
            added, rewritten = items, True
        if added:
            writes.append(SideWrite("RPUSH", key, tuple(i.model_dump_json() for i in added)))
    generation = held.generation if held is not None else -1
    if rewritten:
        # A loser that holds the old entries must not take the new ones for an append.
        writes.append(SideWrite("HINCRBY", keys.run(state.run_id), ("generation", 1)))
        generation = generation + 1 if generation >= 0 else -1
    return writes, generation


def _appended(items: Sequence[Any], before: Sequence[Any] | None) -> Sequence[Any] | None:
    """What ``items`` adds after ``before``; None if it does not start with ``before``."""
    if before is None or len(items) < len(before):
        return None
    n = len(before)
    # Commits copy the entries they keep, so identity settles it without comparing content.
    if all(a is b for a, b in zip(items, before, strict=False)) or list(items[:n]) == list(before):
        return items[n:]
    return None


def _array(entries: list[str]) -> str:
    return "[" + ",".join(entries) + "]"
