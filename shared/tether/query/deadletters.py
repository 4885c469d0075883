"""Dead letters: read a page of them, one whole, replay one, delete one."""

from __future__ import annotations

from pydantic import BaseModel

from tether.runtime import Runtime
from tether.store import keys
from tether.transport.wire import EventKind
from tether.worker import deadletters
from tether.worker.deadletters import DeadLetter


class DeadLetterPage(BaseModel):
    letters: list[DeadLetter]
    total: int


def list_dead(rt: Runtime, limit: int = 50) -> DeadLetterPage:
    """The newest dead letters first, and how many the stream holds."""
    return DeadLetterPage(
        letters=deadletters.list_dead(rt, limit),
        total=int(rt.store.client.xlen(keys.DEAD_STREAM)),
    )


def get(rt: Runtime, entry_id: str) -> DeadLetter | None:
    return deadletters.get(rt, entry_id)


def replay(rt: Runtime, entry_id: str) -> DeadLetter | None:
    """Put the letter back on its queue, once; None if there is no such replayable letter."""
    return deadletters.replay(rt, entry_id)


def delete(rt: Runtime, entry_id: str) -> DeadLetter | None:
    """Drop a letter for good (its cause will not be fixed); None if there was none."""
    letter = deadletters.get(rt, entry_id)
    if letter is None or not rt.store.client.xdel(keys.DEAD_STREAM, entry_id):
        return None
    if letter.run_id is not None:
        rt.store.log.append(
            letter.run_id, EventKind.dead_letter_deleted, -1, task=letter.task, id=entry_id
        )
    return letter
