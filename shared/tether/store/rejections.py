"""Task events that could not be accepted, kept where their publisher can look them up."""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from tether.store import keys
from tether.store.log import LIFECYCLE_MAXLEN, StreamEntries
from tether.transport.wire import utcnow


class Rejections:
    """Refused events: the stream tether:rejected, and the reason by event id."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    def record(self, reason: str, payload: Any) -> None:
        """Record an event that could not be accepted.

        Every refusal goes to the stream tether:rejected; one whose event id can
        be read is also kept under that id, for ``reason(event_id)``.
        """
        text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
        event_id = payload.get("event_id") if isinstance(payload, dict) else None
        if isinstance(event_id, str) and event_id:
            self._client.set(keys.rejection(event_id), reason, ex=self._ttl_s)
        self._client.xadd(
            keys.REJECTED_STREAM,
            {"reason": reason, "payload": text[:4096], "at": utcnow().isoformat()},
            maxlen=LIFECYCLE_MAXLEN,
            approximate=True,
        )

    def reason(self, event_id: str) -> str | None:
        """Why the event with this id was refused, or None if it was not."""
        reason = self._client.get(keys.rejection(event_id))
        return str(reason) if reason is not None else None

    def recent(self, count: int = 50) -> list[dict[str, str]]:
        """The latest refusals, newest first: reason, payload (cut at 4 KiB), at, id."""
        return [
            dict(fields, id=entry_id)
            for entry_id, fields in cast(
                StreamEntries, self._client.xrevrange(keys.REJECTED_STREAM, count=count)
            )
        ]
