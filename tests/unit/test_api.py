"""The HTTP API without workers: who may call what, and how events are checked.

A real Redis (the suite's own); the app in-process through Starlette's TestClient.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tether.api import create_app
from tether.api.routes import runs as run_routes
from tether.config import Settings
from tether.errors import ConfigError
from tether.escalation import operators
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.state import RunState
from tether.transport.wire import ErrorCategory, EventKind, TaskEvent
from tether.worker import deadletters

AGENTS = ["tests.agents"]


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    """Tokens of a viewer, an approver, an admin and a publisher key, in their files."""
    found: dict[str, str] = {}
    entries = []
    for name, role in (("vic", "viewer"), ("alice", "approver"), ("ada", "admin")):
        token, key = operators.new_token()
        found[name] = token
        entries.append({"name": name, "key_sha256": key, "role": role})
    (tmp_path / "operators.json").write_text(json.dumps({"operators": entries}))
    publisher, key = operators.new_token()
    found["billing"] = publisher
    (tmp_path / "keys.json").write_text(
        json.dumps({"keys": [{"name": "billing", "key_sha256": key}]})
    )
    return found


@pytest.fixture
def api(
    redis_url: str, tmp_path: Path, tokens: dict[str, str]
) -> Iterator[tuple[TestClient, Runtime]]:
    rt = Runtime(
        Settings(
            redis_url=redis_url,
            agent_modules=AGENTS,
            operators_file=str(tmp_path / "operators.json"),
            api_keys_file=str(tmp_path / "keys.json"),
        )
    )
    with TestClient(create_app(rt, include_console=False)) as http:
        yield http, rt


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _event(event_id: str = "e-1", agent: str = "calculator") -> dict[str, object]:
    return {"event_id": event_id, "agent": agent, "input": "add 2 and 3"}


def test_a_request_without_credentials_is_refused(api: tuple[TestClient, Runtime]) -> None:
    http, _ = api
    for method, path in (("GET", "/v1/runs"), ("GET", "/v1/escalations"), ("POST", "/v1/events")):
        reply = http.request(method, path, json=_event() if method == "POST" else None)
        assert reply.status_code == 401, (path, reply.text)
        assert "Bearer" in reply.json()["detail"]
    assert http.get("/v1/runs", headers=_auth("not-a-token")).status_code == 401
    # The probes need none.
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").json() == {"ok": True, "detail": "Redis answers"}


def test_a_publisher_posts_an_event_once_and_its_repeat_names_the_same_run(
    api: tuple[TestClient, Runtime], tokens: dict[str, str]
) -> None:
    http, rt = api
    first = http.post("/v1/events", json=_event("e-twice"), headers=_auth(tokens["billing"]))
    assert first.status_code == 202, first.text
    assert first.json()["run_id"] == run_id_for("e-twice")
    assert first.json()["published"] is True
    queued = rt.broker.llen("tether.plan")
    # Once its run exists, posting it again publishes nothing.
    rt.store.client.hset(keys.run(run_id_for("e-twice")), "status", "running")
    again = http.post("/v1/events", json=_event("e-twice"), headers=_auth(tokens["billing"]))
    assert again.status_code == 200
    assert again.json() == {
        "event_id": "e-twice",
        "run_id": run_id_for("e-twice"),
        "published": False,
        "status": "running",
    }
    assert rt.broker.llen("tether.plan") == queued


def test_a_bad_event_gets_a_4xx_with_its_reason(
    api: tuple[TestClient, Runtime], tokens: dict[str, str]
) -> None:
    http, _ = api
    missing = http.post(
        "/v1/events", json={"agent": "calculator", "input": "x"}, headers=_auth(tokens["alice"])
    )
    assert missing.status_code == 422
    assert any(e["loc"][-1] == "event_id" for e in missing.json()["detail"])
    unknown = http.post(
        "/v1/events", json=_event("e-2", "nosuchagent"), headers=_auth(tokens["alice"])
    )
    assert unknown.status_code == 422
    assert "'nosuchagent' is not registered" in unknown.json()["detail"]
    assert "calculator" in unknown.json()["detail"]  # it says which agents it knows
    evaluation = http.post(
        "/v1/events", json=_event("e-3", "eval:calculator"), headers=_auth(tokens["alice"])
    )
    assert evaluation.status_code == 422


def test_a_viewer_reads_but_may_not_decide_or_publish(
    api: tuple[TestClient, Runtime], tokens: dict[str, str]
) -> None:
    http, _ = api
    assert http.get("/v1/runs", headers=_auth(tokens["vic"])).status_code == 200
    decided = http.post(
        "/v1/escalations/esc_x/decision", json={"verdict": "approve"}, headers=_auth(tokens["vic"])
    )
    assert decided.status_code == 403
    assert "approver role" in decided.json()["detail"]
    assert http.post("/v1/events", json=_event(), headers=_auth(tokens["vic"])).status_code == 403
    # A publisher key publishes and reads nothing.
    assert http.get("/v1/runs", headers=_auth(tokens["billing"])).status_code == 403
    # Only an admin deletes dead letters.
    assert http.delete("/v1/dead-letters/1-0", headers=_auth(tokens["alice"])).status_code == 403
    assert http.delete("/v1/dead-letters/1-0", headers=_auth(tokens["ada"])).status_code == 404


def test_anonymous_access_only_on_loopback(redis_url: str) -> None:
    rt = Runtime(Settings(redis_url=redis_url))
    with pytest.raises(ConfigError, match="loopback"):
        create_app(rt, anonymous=True, host="0.0.0.0", include_console=False)
    app = create_app(rt, anonymous=True, include_console=False)
    with TestClient(app, client=("127.0.0.1", 50000)) as http:
        assert http.get("/v1/runs").status_code == 200


def test_openapi_names_every_route(api: tuple[TestClient, Runtime]) -> None:
    http, _ = api
    schema = http.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths = schema["paths"]
    for path in (
        "/v1/events",
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/timeline",
        "/v1/runs/{run_id}/events",
        "/v1/escalations",
        "/v1/escalations/{escalation_id}/decision",
        "/v1/stats",
        "/v1/dead-letters",
        "/v1/queues",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path


def test_a_run_stream_replays_the_log_from_last_event_id_and_ends_at_run_finished(
    api: tuple[TestClient, Runtime], tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, rt = api
    run_id = run_id_for("e-stream")
    rt.store.client.hset(keys.run(run_id), "status", "succeeded")
    written = [
        rt.store.log.append(run_id, kind, step)
        for kind, step in (
            (EventKind.run_started, 0),
            (EventKind.model_call, 1),
            (EventKind.run_finished, 1),
        )
    ]
    rt.store.flush()
    # What comes after the end is not the run's: the stream stops before it.
    rt.store.log.append(run_id, EventKind.feedback, 1)
    rt.store.flush()
    ids = [entry_id for entry_id, _ in rt.store.log.read(run_id)]

    def stream(**headers: str) -> list[tuple[str, str]]:
        found = []
        with http.stream(
            "GET", f"/v1/runs/{run_id}/events", headers={**_auth(tokens["vic"]), **headers}
        ) as reply:
            assert reply.status_code == 200
            fields: dict[str, str] = {}
            for line in reply.iter_lines():
                if line == "" and "id" in fields:
                    found.append((fields["id"], fields["event"]))
                    fields = {}
                elif line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.strip()
        return found

    assert stream() == [(ids[i], str(e.kind)) for i, e in enumerate(written)]
    assert stream(**{"Last-Event-ID": ids[0]}) == [
        (ids[1], "model_call"),
        (ids[2], "run_finished"),
    ]
    monkeypatch.setattr(run_routes, "APPEAR_WAIT_S", 0.2)
    missing = http.get("/v1/runs/run_00000000000000000000/events", headers=_auth(tokens["vic"]))
    assert missing.status_code == 404


def test_stats_leave_evaluation_runs_out_unless_asked(
    api: tuple[TestClient, Runtime], tokens: dict[str, str]
) -> None:
    http, rt = api
    for n, agent in enumerate(("calculator", "eval:calculator", "eval:calculator")):
        event = TaskEvent(event_id=f"s{n}", agent=agent, input="add")
        state = RunState(
            run_id=run_id_for(event.event_id), event_id=event.event_id, agent=agent, goal="add"
        )
        rt.store.create(event, state)

    def total(**params: str) -> int:
        reply = http.get("/v1/stats", params=params, headers=_auth(tokens["vic"]))
        assert reply.status_code == 200, reply.text
        return int(reply.json()["runs"]["total"])

    assert total() == 1
    assert total(include_eval="true") == 3
    assert total(agent="eval:calculator") == 2


def test_a_dead_letter_is_read_and_deleted_by_its_id_and_a_gone_one_is_a_404(
    api: tuple[TestClient, Runtime], tokens: dict[str, str]
) -> None:
    http, rt = api
    entry_id = deadletters.record(rt, "tether.plan", {"x": 1}, "why", ErrorCategory.internal)
    assert entry_id is not None
    admin = _auth(tokens["ada"])
    assert http.get(f"/v1/dead-letters/{entry_id}", headers=admin).json()["id"] == entry_id
    assert http.delete(f"/v1/dead-letters/{entry_id}", headers=admin).json()["id"] == entry_id
    gone = http.get(f"/v1/dead-letters/{entry_id}", headers=admin)
    assert gone.status_code == 404
    assert "GET /v1/dead-letters lists them" in gone.json()["detail"]
    assert http.post(f"/v1/dead-letters/{entry_id}/replay", headers=admin).status_code == 404
