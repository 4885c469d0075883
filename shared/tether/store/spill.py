"""Writes a commit makes to other slots of a Redis Cluster, applied once after it.

On one Redis a commit writes its document and everything that describes it
(log, lifecycle stream, indexes) in one script. On a Redis Cluster a script
reaches one slot only, so the commit's script writes what lies in its own slot
(the run's keys share a hash tag) and records the rest as one entry in the
document's spill list, in the same slot and the same script: written together
or not at all, as before. The winner then applies the entry, one script per
target slot that marks it applied (so a second application does nothing), and
removes it. A writer that dies in between leaves the entry for whoever commits
the document next (a winning commit gets the list back) or for the reconciler,
which settles the spill list of every run it looks at.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from typing import Any

import redis
import structlog

from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.scripts import Script

# A command, its key and its arguments.
Write = tuple[str, str, list[Any]]

SPILL = Script.load("tether.store", "spill.lua")
# How long an applied entry's markers live: far longer than an entry waits for its
# removal (the writer removes it in its next round trip, else the reconciler within
# a sweep), so one that is still listed cannot be applied twice.
MARK_TTL_S = 3600

log = structlog.get_logger(__name__)


def encode(writes: list[Write]) -> str:
    """One entry; its id is random, as markers name it: it must say nothing of whom
    the writes are about (forgetting a subject leaves no key that names it)."""
    return json.dumps({"id": uuid.uuid4().hex, "writes": writes}, separators=(",", ":"))


def settle(batch: WriteBatch, spill_key: str, entries: list[str]) -> None:
    """Apply ``entries`` of ``spill_key`` in order, each once, then remove them.

    The removals ride along with the next round trip: they go only after every
    application was answered, since a pipeline keeps no order across nodes.
    A failure leaves the entries for the next commit or the reconciler.
    """
    if not entries:
        return

    def build(pipe: Any) -> None:
        for entry in entries:
            _add_apply(pipe, entry)

    try:
        batch.run(build)
    except redis.RedisError as exc:
        log.warning("spill_not_applied", spill=spill_key, entries=len(entries), error=str(exc))
        return
    if not all(batch.defer("lrem", spill_key, 1, entry) for entry in entries):
        batch.run(lambda pipe: [pipe.lrem(spill_key, 1, entry) for entry in entries])


def settle_all(batch: WriteBatch, spill_key: str) -> int:
    """Settle whatever ``spill_key`` holds (a writer died before it did); how many.

    The removals go at once: a sweeper's next round trip may be a sweep away.
    """
    (entries,) = batch.run(lambda pipe: pipe.lrange(spill_key, 0, -1))
    settle(batch, spill_key, [str(e) for e in entries])
    batch.flush()
    return len(entries)


def _add_apply(pipe: Any, entry: str) -> None:
    """Queue one script per slot that the entry's writes reach."""
    decoded = json.loads(entry)
    by_slot: dict[str, list[Write]] = defaultdict(list)
    for command, key, args in decoded["writes"]:
        if not keys.spillable(key):
            log.error("spill_write_refused", key=key, command=command, entry=decoded["id"])
            continue
        by_slot[keys.slot_tag(key)].append((command, key, args))
    for writes in by_slot.values():
        marker = keys.spilled(writes[0][1], decoded["id"])
        argv: list[Any] = [MARK_TTL_S]
        for command, _, args in writes:
            argv += [command, len(args), *args]
        SPILL.add(pipe, 1 + len(writes), marker, *(key for _, key, _ in writes), *argv)
