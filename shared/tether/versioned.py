"""Versioned documents in Redis: a writer commits only over the version it read.

Run state and escalations are both stored this way, so a duplicate delivery or
a concurrent writer can never overwrite a newer commit. A writer that loses
gets the winning document back in the same reply, so it can decide again
without another round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import redis

from tether.errors import StaleStateError

SCRIPT = files("tether").joinpath("versioned.lua").read_text()


class VersionedDocs:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._cas = client.register_script(SCRIPT)

    def read(self, key: str) -> tuple[str, int] | None:
        doc, version = self._client.hmget(key, ["doc", "version"])
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
        )
        new_version, _ = parse_cas(self._cas(keys=cas_keys, args=args))
        if new_version < 0:
            raise StaleStateError(
                f"{key} changed since version {expected_version} was read; reload and decide again"
            )
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

    # ZADD, ZREM, HSET, HDEL, HINCRBY, EXPIRE, RPUSH, LREM, LTRIM or DEL (versioned.lua
    # allows no others)
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
    side_writes: Sequence[SideWrite] = (),
    tails: Sequence[tuple[str, int]] = (),
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of one compare-and-set, for a pipeline's EVAL of SCRIPT.

    ``require`` lists (set, member) pairs that must all hold for the write to go
    ahead, checked after the version. ``tails`` lists (list, index) pairs: a write
    that loses gets each list's entries from that index back (Lost.tails).
    """
    pairs = fields or {}
    args: list[Any] = [
        expected_version,
        doc,
        ttl_s,
        len(pairs),
        len(expire),
        len(require),
        len(appends),
    ]
    for name, value in pairs.items():
        args += [name, value]
    args += [member for _, member in require]
    for append in appends:
        args += [append.maxlen, len(append.fields)]
        for field, entry in append.fields.items():
            args += [field, entry]
    for side in side_writes:
        args += [side.command, len(side.args), *side.args]
    args += [index for _, index in tails]
    args.append(len(tails))
    cas_keys = [key, *expire, *(k for k, _ in require), *(a.stream for a in appends)]
    return [*cas_keys, *(side.key for side in side_writes), *(k for k, _ in tails)], args


REQUIREMENT_MISSING = -2


@dataclass(frozen=True)
class Lost:
    """What a losing write gets back: the winner's document and the tails it asked for."""

    doc: str
    version: int
    # Bumped whenever a list of the document's is written anew rather than appended to.
    generation: int
    tails: list[list[str]]


def parse_cas(reply: Any) -> tuple[int, Lost | None]:
    """(new version, None) when the write won; (-1, Lost or None if there is no document)
    when it lost; (REQUIREMENT_MISSING, None) when a required set member was missing."""
    values = list(reply)
    if int(values[0]) >= 0 or int(values[0]) == REQUIREMENT_MISSING:
        return int(values[0]), None
    doc = values[2] if len(values) > 2 else None
    if doc is None:
        return -1, None
    tails = [[_text(entry) for entry in tail] for tail in values[4:]]
    return -1, Lost(_text(doc), int(values[1]), int(values[3] or 0), tails)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
