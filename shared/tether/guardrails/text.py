"""The strings inside a value a guardrail judges: text itself, or any JSON value's strings."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any


def strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` (dict keys left out), depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


def map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` with ``change`` applied to each of its strings (dict keys left as they are)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [map_strings(item, change) for item in value]
    return value


def counted(kinds: Sequence[str]) -> str:
    """How many of each kind were found, for a verdict's reason: "2 email, 1 phone"."""
    return ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds)))
