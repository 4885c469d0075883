"""Versioned documents in Redis: a writer commits only over the version it read.

Run state and escalations are both stored this way, so a duplicate delivery or
a concurrent writer can never overwrite a newer commit. A writer that loses
gets the winning document back in the same reply, so it can decide again
without another round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.errors import StaleStateError, TetherError
from tether.store import keys, spill
from tether.store.batch import WriteBatch
from tether.store.scripts import Script

VERSIONED = Script.load("tether.store", "versioned.lua")
PUBLISH = "PUBLISH"


class VersionedDocs:
    def __init__(self, batch: WriteBatch, *, cluster: bool = False) -> None:
        self._batch = batch
        self._cluster = cluster

    def read(self, key: str) -> tuple[str, int] | None:
        ((doc, version),) = self._batch.run(lambda pipe: pipe.hmget(key, ["doc", "version"]))
        if doc is None:
            return None
        return str(doc), int(version or 0)

    def write(
        self,
        key: str,
        doc: str,
        expected_version: int,
        *,
        expire: Sequence[str] = (),
        ttl_s: int = 0,
        appends: Sequence[Append] = (),
        side_writes: Sequence[SideWrite] = (),
    ) -> int:
        """Commit ``doc`` over ``expected_version`` with what describes it; StaleStateError
        if it lost, and then nothing was written."""
        cas_keys, args = cas_call(
            key,
            doc,
            expected_version,
            expire=expire,
            ttl_s=ttl_s,
            appends=appends,
            side_writes=side_writes,
            cluster=self._cluster,
        )
        (reply,) = self._batch.run(
            lambda pipe: VERSIONED.add(pipe, len(cas_keys), *cas_keys, *args)
        )
        new_version, _ = parse_cas(reply)
        if new_version < 0:
            raise StaleStateError(
                f"{key} changed since version {expected_version} was read; reload and decide again"
            )
        if self._cluster:
            spill.settle(self._batch, keys.spill(key), spill_entries(reply))
        return new_version


@dataclass(frozen=True)
class Append:
    """A stream entry that goes in only if the commit it rides with wins."""

    stream: str
    fields: dict[str, str | int]
    maxlen: int = 0  # 0: uncapped; else trimmed to about this many entries

    def xadd_kwargs(self) -> dict[str, Any]:
        return {"maxlen": self.maxlen, "approximate": True} if self.maxlen else {}


@dataclass(frozen=True)
class SideWrite:
    """An index or key update that goes in only if the commit it rides with wins."""

    # ZADD, ZREM, HSET, HDEL, HINCRBY, EXPIRE, RPUSH, LREM, LTRIM, DEL, LPUSH or PUBLISH
    # (versioned.lua allows no others); a PUBLISH's key is its channel
    command: str
    key: str
    args: tuple[str | int | float, ...]


def cas_call(
    key: str,
    doc: str,
    expected_version: int,
    *,
    fields: dict[str, str] | None = None,
    expire: Sequence[str] = (),
    ttl_s: int = 0,
    appends: Sequence[Append] = (),
    require: Sequence[tuple[str, str]] = (),
    holding: Sequence[tuple[str, str]] = (),
    side_writes: Sequence[SideWrite] = (),
    tails: Sequence[tuple[str, int]] = (),
    cluster: bool = False,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one compare-and-set, for a pipeline's EVALSHA of VERSIONED.

    ``require`` lists (set, member) pairs that must all hold for the write to go
    ahead, checked after the version. ``holding`` lists (key, string) pairs: each key
    must hold exactly that string, checked after ``require`` (a HELD_VALUE_DIFFERS reply
    names the first that does not); each key shares the document's slot and needs only
    read rights.
    ``tails`` lists (list, index) pairs: a write
    that loses gets each list's entries from that index back (Lost.tails).

    On a Redis Cluster (``cluster``) a script reaches one slot only: the appends
    and side writes to keys of other slots go into the document's spill list
    instead, in the same script, and a winner gets that list back to apply
    (tether.store.spill).
    """
    spill_key = None
    # Channels are no keys: a cluster publishes to every node from any slot, and an ACL
    # grants them apart (&patterns).
    publishes = [w for w in side_writes if w.command == PUBLISH]
    side_writes = [w for w in side_writes if w.command != PUBLISH]
    if cluster:
        away, appends, side_writes = _split(key, appends, side_writes)
        if away is not None:
            spill_key = keys.spill(key)
            side_writes = [*side_writes, SideWrite("RPUSH", spill_key, (away,))]
    pairs = fields or {}
    args: list[Any] = [
        expected_version,
        doc,
        ttl_s,
        len(pairs),
        len(expire),
        len(require),
        len(appends),
        len(holding),
    ]
    for name, value in pairs.items():
        args += [name, value]
    args += [member for _, member in require]
    # Arguments, not KEYS: a script's KEYS need write rights, and the writer may only read
    # them (versioned.lua).
    args += [part for pair in holding for part in pair]
    for append in appends:
        args += [append.maxlen, len(append.fields)]
        for field, entry in append.fields.items():
            args += [field, entry]
    for side in side_writes:
        args += [side.command, len(side.args), *side.args]
    for publish in publishes:
        (message,) = publish.args
        args += [publish.key, message]
    args += [index for _, index in tails]
    args += [len(publishes), len(tails), 0 if spill_key is None else 1]
    cas_keys = [
        key,
        *expire,
        *(k for k, _ in require),
        *(a.stream for a in appends),
    ]
    tail_keys = [k for k, _ in tails]
    spilled = [] if spill_key is None else [spill_key]
    return [*cas_keys, *(side.key for side in side_writes), *tail_keys, *spilled], args


def _split(
    key: str, appends: Sequence[Append], side_writes: Sequence[SideWrite]
) -> tuple[str | None, list[Append], list[SideWrite]]:
    """(spill entry or None, the appends and side writes in ``key``'s own slot)."""
    home = keys.slot_tag(key)
    local_appends = [a for a in appends if keys.slot_tag(a.stream) == home]
    local_writes = [w for w in side_writes if keys.slot_tag(w.key) == home]
    away: list[spill.Write] = [
        ("XADD", a.stream, [a.maxlen, *(v for pair in a.fields.items() for v in pair)])
        for a in appends
        if keys.slot_tag(a.stream) != home
    ]
    away += [(w.command, w.key, list(w.args)) for w in side_writes if keys.slot_tag(w.key) != home]
    if not away:
        return None, local_appends, local_writes
    return spill.encode(away), local_appends, local_writes


REQUIREMENT_MISSING = -2
HELD_VALUE_DIFFERS = -3


class HeldValueDiffersError(TetherError):
    """A key that a commit required to hold an exact string held another, or nothing:
    the commit wrote nothing. ``found`` is what the key held (None: it was missing)."""

    def __init__(self, key: str, found: str | None) -> None:
        super().__init__(
            f"{key} holds {'nothing' if found is None else 'another value'} than the commit "
            "required, so nothing was written; read it and decide again"
        )
        self.key = key
        self.found = found


@dataclass(frozen=True)
class Lost:
    """What a losing write gets back: the winner's document and the tails it asked for."""

    doc: str
    version: int
    # Bumped whenever a list of the document's is written anew rather than appended to.
    generation: int
    tails: list[list[str]]


def spill_entries(reply: Any) -> list[str]:
    """What a winning write found in its spill list, its own entry last (tether.store.spill)."""
    values = list(reply)
    return [_text(entry) for entry in values[1:]] if int(values[0]) >= 0 else []


def parse_cas(reply: Any) -> tuple[int, Lost | None]:
    """(new version, None) when the write won; (-1, Lost or None if there is no document)
    when it lost; (REQUIREMENT_MISSING, None) when a required set member was missing;
    (HELD_VALUE_DIFFERS, None) when a key held another string (see ``held_differs``)."""
    values = list(reply)
    if int(values[0]) >= 0 or int(values[0]) in (REQUIREMENT_MISSING, HELD_VALUE_DIFFERS):
        return int(values[0]), None
    doc = values[2] if len(values) > 2 else None
    if doc is None:
        return -1, None
    tails = [[_text(entry) for entry in tail] for tail in values[4:]]
    return -1, Lost(_text(doc), int(values[1]), int(values[3] or 0), tails)


def held_differs(reply: Any, holding: Sequence[tuple[str, str]]) -> HeldValueDiffersError:
    """The error for a HELD_VALUE_DIFFERS reply to a write that asked ``holding``."""
    values = list(reply)
    found = values[2] if len(values) > 2 else None
    key, _ = holding[int(values[1]) - 1]
    return HeldValueDiffersError(key, None if found is None else _text(found))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
