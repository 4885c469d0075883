"""POST /v1/events takes an event's priority, as TaskEvent does, and refuses others."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.unit.test_admission import Published
from tests.unit.test_api import _auth, _event, api, tokens  # noqa: F401 (fixtures)
from tether.runtime import Runtime
from tether.transport.wire import Priority


def test_a_posted_event_keeps_its_priority_and_an_unknown_one_is_refused(
    api: tuple[TestClient, Runtime],  # noqa: F811
    tokens: dict[str, str],  # noqa: F811
) -> None:
    http, rt = api
    published = Published(rt)
    batch = http.post(
        "/v1/events",
        json={**_event("e-batch"), "priority": "batch"},
        headers=_auth(tokens["billing"]),
    )
    assert batch.status_code == 202, batch.text
    plain = http.post("/v1/events", json=_event("e-plain"), headers=_auth(tokens["billing"]))
    assert plain.status_code == 202, plain.text
    assert [(e.event_id, e.priority) for e in published.events] == [
        ("e-batch", Priority.batch),
        ("e-plain", Priority.interactive),
    ]
    odd = http.post(
        "/v1/events",
        json={**_event("e-odd"), "priority": "urgent"},
        headers=_auth(tokens["billing"]),
    )
    assert odd.status_code == 422
    assert "priority" in odd.text
    assert len(published.events) == 2
