"""One delivery of a message to a consumer: a delivery tag of its own, and a count.

kombu's tag comes from the message itself, and a message put back keeps it: a
stalled consumer's late ack would erase the record of the consumer that took the
message after it. So every read (the landing move, kombu's BRPOP, a basic_get)
makes its message here, and every delivery gets a fresh tag. A message put back
after its consumer died counts one more delivery in its headers
(``tether_deliveries``), for the delivery cap.
"""

from __future__ import annotations

import uuid
from typing import Any

from kombu.transport import virtual

from tether.errors import TetherError

DELIVERIES_HEADER = "tether_deliveries"


class MalformedMessageError(TetherError):
    """A message on a queue is not one kombu can deliver: it can never run."""

    def __init__(self, what: str, payload: Any = None) -> None:
        super().__init__(
            f"{what}; it can never run: kept as a dead letter (`tether dead list`), "
            "find who wrote it to the queue"
        )
        self.what = what
        self.payload = payload


class Message(virtual.Message):
    """kombu's message, with a delivery tag of this delivery's own."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        properties = payload.get("properties") if isinstance(payload, dict) else None
        if not isinstance(properties, dict):
            raise MalformedMessageError("a message without kombu's properties", payload)
        delivery = properties.get("delivery_info")
        if not isinstance(delivery, dict) or not {"exchange", "routing_key"} <= delivery.keys():
            raise MalformedMessageError("a message without its exchange and routing key", payload)
        try:
            super().__init__(payload, channel=channel, **kwargs)  # type: ignore[no-untyped-call]  # kombu is untyped
        except (ValueError, TypeError, KeyError) as exc:  # a body that does not decode
            raise MalformedMessageError(f"a message kombu cannot read ({exc!r})", payload) from exc
        # In the payload too: it is what kombu records, and restores.
        self.delivery_tag = properties["delivery_tag"] = uuid.uuid4().hex


def deliveries(headers: dict[str, Any] | None) -> int:
    """How many times a message has been handed to a worker (1 on its first delivery)."""
    value = (headers or {}).get(DELIVERIES_HEADER)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 1


def count_restore(payload: Any) -> None:
    """Count one more delivery in ``payload``, a message going back to its queue."""
    headers = payload.get("headers") if isinstance(payload, dict) else None
    if isinstance(headers, dict):
        headers[DELIVERIES_HEADER] = deliveries(headers) + 1
