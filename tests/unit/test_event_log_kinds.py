"""A run's event log stays readable whatever kinds its entries were written with."""

from __future__ import annotations

import redis

from tether.store import keys
from tether.store.connection import connect
from tether.store.runs import RunStore
from tether.transport.wire import EventKind, RunEvent


def test_an_entry_of_a_retired_kind_leaves_the_rest_of_the_log_readable(redis_url: str) -> None:
    client: redis.Redis = connect(redis_url)
    store = RunStore(client, run_ttl_s=3600)
    store.log.append("run-old", EventKind.run_started, 0)
    # Written by a release before the kind was renamed forged_message_refused.
    retired = '{"run_id":"run-old","kind":"forged_action_refused","step":1,"data":{"why":"x"}}'
    client.xadd(keys.run_log("run-old"), {"event": retired})
    store.log.append("run-old", EventKind.run_finished, 1)

    events = [event for _, event in store.log.read("run-old")]

    assert [str(event.kind) for event in events] == [
        "run_started",
        "forged_action_refused",
        "run_finished",
    ]
    assert events[1].kind != EventKind.forged_message_refused
    assert events[1].data == {"why": "x"}
    # Written back as it was read (an export, the API's event stream).
    assert '"kind":"forged_action_refused"' in events[1].model_dump_json()


def test_a_known_kind_still_reads_as_its_member() -> None:
    event = RunEvent.model_validate_json('{"run_id":"r","kind":"model_call","step":2}')
    assert event.kind is EventKind.model_call
