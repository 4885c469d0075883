"""POST /v1/runs/{id}/retry and /fork without workers: who may call them, and what
each refuses (an unknown run, a run still going, a step its log never planned)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tether.api import create_app
from tether.config import Settings
from tether.escalation import operators
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.store.state import RunState, RunStatus
from tether.transport.wire import EventKind, RunEvent, TaskEvent


@pytest.fixture
def api(redis_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Runtime, dict[str, str]]]:
    tokens: dict[str, str] = {}
    entries = []
    for name, role in (("vic", "viewer"), ("alice", "approver")):
        token, key = operators.new_token()
        tokens[name] = token
        entries.append({"name": name, "key_sha256": key, "role": role})
    (tmp_path / "operators.json").write_text(json.dumps({"operators": entries}))
    rt = Runtime(
        Settings(
            redis_url=redis_url,
            agent_modules=["tests.agents"],
            operators_file=str(tmp_path / "operators.json"),
        )
    )
    with TestClient(create_app(rt, include_console=False)) as http:
        yield http, rt, tokens


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _stored_run(rt: Runtime, event_id: str, status: RunStatus) -> str:
    """A run as intake stores one, its log holding only its start (no step planned)."""
    run_id = run_id_for(event_id)
    event = TaskEvent(event_id=event_id, agent="calculator", input="add 2 and 3")
    state = RunState(run_id=run_id, event_id=event_id, agent="calculator", goal=event.input)
    started = RunEvent(run_id=run_id, kind=EventKind.run_started, step=0, data={})
    rt.store.create(event, state, log=[started])
    if status != RunStatus.queued:
        rt.store.update(run_id, lambda s: s.model_copy(update={"status": status}))
    rt.store.flush()
    return run_id


def test_a_viewer_may_neither_retry_nor_fork(
    api: tuple[TestClient, Runtime, dict[str, str]],
) -> None:
    http, rt, tokens = api
    run_id = _stored_run(rt, "e-viewed", RunStatus.failed)
    viewer = _auth(tokens["vic"])

    forked = http.post(f"/v1/runs/{run_id}/fork", json={"from_step": 0}, headers=viewer)
    retried = http.post(f"/v1/runs/{run_id}/retry", headers=viewer)

    assert (forked.status_code, retried.status_code) == (403, 403)
    assert "approver role" in forked.json()["detail"]
    assert http.get(f"/v1/runs/{run_id}", headers=viewer).status_code == 200


def test_what_cannot_be_retried_or_forked_is_refused_with_why(
    api: tuple[TestClient, Runtime, dict[str, str]],
) -> None:
    http, rt, tokens = api
    approver = _auth(tokens["alice"])
    running = _stored_run(rt, "e-running", RunStatus.running)
    failed = _stored_run(rt, "e-failed", RunStatus.failed)

    missing = http.post(
        "/v1/runs/run_00000000000000000000/fork", json={"from_step": 0}, headers=approver
    )
    assert missing.status_code == 404
    not_ended = http.post(f"/v1/runs/{running}/retry", headers=approver)
    assert not_ended.status_code == 409 and "still running" in not_ended.json()["detail"]
    # The failed run never called its model: no step of it can be planned again.
    no_step = http.post(f"/v1/runs/{failed}/fork", json={"from_step": 0}, headers=approver)
    assert no_step.status_code == 409
    assert "no model call at that step" in no_step.json()["detail"]
    negative = http.post(f"/v1/runs/{failed}/fork", json={"from_step": -1}, headers=approver)
    assert negative.status_code == 422


def test_an_approver_retries_an_ended_run_once_per_event_id(
    api: tuple[TestClient, Runtime, dict[str, str]],
) -> None:
    http, rt, tokens = api
    failed = _stored_run(rt, "e-to-retry", RunStatus.failed)
    approver = _auth(tokens["alice"])

    first = http.post(f"/v1/runs/{failed}/retry", json={"event_id": "again-1"}, headers=approver)
    second = http.post(f"/v1/runs/{failed}/retry", json={"event_id": "again-1"}, headers=approver)

    assert first.status_code == second.status_code == 202
    assert first.json() == second.json() == {"run_id": run_id_for("again-1"), "event_id": "again-1"}


def test_a_fork_is_not_taken_through_the_publishers_door(
    api: tuple[TestClient, Runtime, dict[str, str]],
) -> None:
    """POST /v1/events takes no forked_from: a fork goes through /fork, checked there."""
    http, rt, tokens = api
    failed = _stored_run(rt, "e-forked-by-event", RunStatus.failed)
    posted = http.post(
        "/v1/events",
        json={
            "event_id": "sneaky",
            "agent": "calculator",
            "input": "add 2 and 3",
            "forked_from": {"run_id": failed, "step": 0},
        },
        headers=_auth(tokens["alice"]),
    )
    assert posted.status_code == 422
    assert "forked_from" in posted.text
