"""The HTTP API and console as an attacker meets them: every route but a few asks for
credentials, anonymous use is for the loopback interface's own requests only, and a body
too large is refused before it is read.

A real Redis (the suite's own); the app in-process through Starlette's TestClient.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from tether.api import create_app
from tether.api.app import body_cap
from tether.config import Settings
from tether.escalation import operators
from tether.planner import intake
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.transport.wire import EventKind, TaskEvent

AGENTS = ["tests.agents"]
LOOPBACK = ("127.0.0.1", 50000)
ELSEWHERE = ("10.1.2.3", 50000)

# What anyone may ask for: the probes, the schema, the way to the console, its sign-in
# page and its assets. A new route missing from here must refuse a caller without
# credentials, or this list must say why it need not.
OPEN = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("GET", "/"),
    ("GET", "/console/sign-in"),
    # It checks its own CSRF token (the sign-in cookie) and then the operator token.
    ("POST", "/console/sign-in"),
    ("GET", "/console/static/{name}"),
}


@pytest.fixture
def runtime(redis_url: str, tmp_path: Path) -> Runtime:
    _, key = operators.new_token()
    (tmp_path / "operators.json").write_text(
        json.dumps({"operators": [{"name": "ada", "key_sha256": key, "role": "admin"}]})
    )
    return Runtime(
        Settings(
            redis_url=redis_url,
            agent_modules=AGENTS,
            operators_file=str(tmp_path / "operators.json"),
        )
    )


@pytest.fixture
def stranger(runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(runtime), follow_redirects=False) as http:
        yield http


def _routes(http: TestClient) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    # Every route, those of included routers too, as the app matches them.
    for route in iter_route_contexts(http.app.routes):  # type: ignore[attr-defined]
        assert route.path, f"{route!r}: a route without a path this test cannot call"
        for method in sorted((route.methods or set()) - {"HEAD"}):
            found.append((method, route.path))
    return found


def _refused(method: str, path: str, status: int, location: str) -> bool:
    if path.startswith("/console/") and method == "GET":
        # A page sends the browser to sign in.
        return status == 303 and location.startswith("/console/sign-in")
    return status == 401


def test_every_route_but_the_open_ones_refuses_a_caller_without_credentials(
    stranger: TestClient,
) -> None:
    routes = _routes(stranger)
    assert ("POST", "/v1/events") in routes and ("POST", "/console/inbox/approve-all") in routes
    for method, path in routes:
        if (method, path) in OPEN:
            continue
        url = re.sub(r"\{[^}]+\}", "x", path)
        reply = stranger.request(method, url, data={"csrf": "x"} if method != "GET" else None)
        assert _refused(method, path, reply.status_code, reply.headers.get("location", "")), (
            f"{method} {path} answered {reply.status_code} to a caller without credentials: "
            "give it a role check (tether.api.auth, tether.console.access) or add it to OPEN"
        )


def test_no_page_of_the_app_loads_scripts_from_elsewhere(stranger: TestClient) -> None:
    # Swagger UI and ReDoc fetch their scripts from a CDN: on the console's origin, such a
    # script could read a signed-in operator's pages and post their forms.
    for path in ("/docs", "/redoc"):
        assert stranger.get(path).status_code == 404, path
    assert stranger.get("/openapi.json").status_code == 200


def test_anonymous_api_use_is_for_requests_from_loopback_only(runtime: Runtime) -> None:
    app = create_app(runtime, anonymous=True, include_console=False)
    with TestClient(app, client=LOOPBACK) as local:
        assert local.get("/v1/runs").status_code == 200
        # A proxy in front: the request is someone else's, whatever the peer is.
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            relayed = local.get("/v1/runs", headers={header: "127.0.0.1"})
            assert relayed.status_code == 401, header
    with TestClient(app, client=ELSEWHERE) as remote:
        refused = remote.get("/v1/runs")
        assert refused.status_code == 401
        assert "loopback" in refused.json()["detail"]


def test_anonymous_console_use_refuses_a_relayed_request(runtime: Runtime) -> None:
    app = create_app(runtime, anonymous=True)
    with TestClient(app, client=LOOPBACK, follow_redirects=False) as local:
        assert local.get("/console/inbox").status_code == 303  # to sign in, then back
        assert local.get("/console/sign-in").status_code == 303
        session = local.cookies.get("tether_console")
        assert session
        relayed = local.get("/console/inbox", headers={"X-Forwarded-For": "203.0.113.9"})
        assert relayed.status_code == 303
        assert relayed.headers["location"].startswith("/console/sign-in")


def test_a_body_over_the_cap_is_refused_before_it_is_read(runtime: Runtime) -> None:
    token, key = operators.new_token()
    small = runtime.settings.model_copy(update={"max_event_bytes": 1024})
    keys_file = Path(small.operators_file or "").with_name("keys.json")
    keys_file.write_text(json.dumps({"keys": [{"name": "billing", "key_sha256": key}]}))
    rt = Runtime(small.model_copy(update={"api_keys_file": str(keys_file)}))
    cap = body_cap(rt.settings)
    event = {"event_id": "e-big", "agent": "calculator", "input": "x" * cap}
    with TestClient(create_app(rt)) as http:
        big = http.post("/v1/events", json=event, headers={"Authorization": f"Bearer {token}"})
        assert big.status_code == 413
        # Sent without a length, as chunks: counted as it arrives.
        chunks = iter([b'{"event_id": "e-big", "input": "', b"x" * cap, b'"}'])
        streamed = http.post(
            "/v1/events",
            content=chunks,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        # A console form too, before its CSRF token is even looked at.
        form = http.post("/console/sign-in", data={"csrf": "x", "token": "y" * cap})
        assert form.status_code == 413
        # Under the cap, the event's own limit still speaks.
        event["input"] = "x" * 2048
        over = http.post("/v1/events", json=event, headers={"Authorization": f"Bearer {token}"})
        assert over.status_code == 413
        assert "TETHER_MAX_EVENT_BYTES" in over.json()["detail"]


def test_a_bad_event_on_a_thread_takes_no_number_from_it(runtime: Runtime) -> None:
    # A number taken and never published holds the thread's next events for
    # TETHER_THREAD_GAP_S; a thread id with glob characters makes a key no one should.
    token, key = operators.new_token()
    keys_file = Path(runtime.settings.operators_file or "").with_name("keys.json")
    keys_file.write_text(json.dumps({"keys": [{"name": "billing", "key_sha256": key}]}))
    rt = Runtime(runtime.settings.model_copy(update={"api_keys_file": str(keys_file)}))
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(rt, include_console=False)) as http:
        for thread_id, text in (("t-empty", ""), ("t*", "hello"), ("t" * 201, "hello")):
            event = {"event_id": f"e-{len(thread_id)}", "agent": "calculator", "input": text}
            reply = http.post("/v1/events", json={**event, "thread_id": thread_id}, headers=auth)
            assert reply.status_code == 422, (thread_id, reply.text)
            assert not rt.store.client.exists(keys.thread_seq(thread_id)), thread_id
        good = {"event_id": "e-good", "agent": "calculator", "input": "add 1 and 2"}
        assert http.post("/v1/events", json={**good, "thread_id": "t-ok"}, headers=auth).is_success
        assert rt.store.client.hget(keys.thread_seq("t-ok"), "published") in ("1", b"1")


def test_list_sizes_are_capped(runtime: Runtime) -> None:
    token, key = operators.new_token()
    file = Path(runtime.settings.operators_file or "")
    file.write_text(
        json.dumps({"operators": [{"name": "vic", "key_sha256": key, "role": "viewer"}]})
    )
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(runtime, include_console=False)) as http:
        for path in ("/v1/escalations", "/v1/runs", "/v1/dead-letters"):
            assert http.get(f"{path}?limit=1000000", headers=auth).status_code == 422, path
            assert http.get(f"{path}?limit=10", headers=auth).status_code == 200, path


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found[1]


def _sign_in(http: TestClient, token: str) -> str:
    """The session's CSRF token, once signed in with ``token``."""
    form_token = _csrf(http.get("/console/sign-in").text)
    signed = http.post("/console/sign-in", data={"csrf": form_token, "token": token})
    assert signed.status_code == 303 and http.cookies.get("tether_console")
    return _csrf(http.get("/console/").text)


def test_every_change_needs_its_role_and_every_console_form_its_csrf_token(
    runtime: Runtime,
) -> None:
    entries, tokens = [], {}
    for name, role in (("vic", "viewer"), ("ada", "admin")):
        tokens[name], key = operators.new_token()
        entries.append({"name": name, "key_sha256": key, "role": role})
    Path(runtime.settings.operators_file or "").write_text(json.dumps({"operators": entries}))
    app = create_app(runtime)
    with TestClient(app, follow_redirects=False) as viewer:
        changes = [
            (m, re.sub(r"\{[^}]+\}", "x", p))
            for m, p in _routes(viewer)
            if m != "GET" and (m, p) not in OPEN
        ]
        assert ("DELETE", "/v1/dead-letters/x") in changes
        # A viewer changes nothing, through the API or the console.
        auth = {"Authorization": f"Bearer {tokens['vic']}"}
        # With the session's own CSRF token: only the role stops it.
        csrf = _sign_in(viewer, tokens["vic"])
        for method, url in changes:
            if url == "/console/sign-out":
                continue
            headers = auth if url.startswith("/v1/") else None
            reply = viewer.request(method, url, headers=headers, data={"csrf": csrf})
            assert reply.status_code == 403, f"{method} {url} let a viewer in: {reply.status_code}"
    with TestClient(app, follow_redirects=False) as admin:
        # An admin's console form without the session's CSRF token does nothing either.
        _sign_in(admin, tokens["ada"])
        for method, url in changes:
            if url.startswith("/console/"):
                reply = admin.request(method, url, data={"csrf": "not-the-token"})
                assert reply.status_code == 403, f"{method} {url} took a form without CSRF"
                assert "CSRF" in reply.text


def test_two_posts_of_one_event_at_once_make_one_run(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both posts find no run (intake has not taken the event yet), so both publish: what
    # makes one run is intake, which creates a run once per event id.
    token, key = operators.new_token()
    keys_file = Path(runtime.settings.operators_file or "").with_name("keys.json")
    keys_file.write_text(json.dumps({"keys": [{"name": "billing", "key_sha256": key}]}))
    rt = Runtime(runtime.settings.model_copy(update={"api_keys_file": str(keys_file)}))
    published: list[TaskEvent] = []
    monkeypatch.setattr(rt, "publish_event", published.append)
    monkeypatch.setattr(rt, "send_step", lambda run_id, step: None)
    event = {"event_id": "e-race", "agent": "calculator", "input": "What is 2 + 3?"}
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(rt, include_console=False)) as http:
        with ThreadPoolExecutor(2) as pool:
            replies = list(
                pool.map(lambda _: http.post("/v1/events", json=event, headers=auth), range(2))
            )
        assert {r.status_code for r in replies} <= {200, 202}
        assert {r.json()["run_id"] for r in replies} == {run_id_for("e-race")}
        for copy in published:
            intake.start(rt, copy.model_dump(mode="json"))
        assert rt.store.status(run_id_for("e-race")) is not None
        log = rt.store.log.read(run_id_for("e-race"))
        created = [e for _, e in log if e.kind == EventKind.run_started]
        assert len(created) == 1
        again = http.post("/v1/events", json=event, headers=auth)
        assert again.status_code == 200 and again.json()["published"] is False


def test_a_stream_resumed_from_no_entry_id_is_refused_before_it_begins(
    runtime: Runtime,
) -> None:
    token, key = operators.new_token()
    Path(runtime.settings.operators_file or "").write_text(
        json.dumps({"operators": [{"name": "vic", "key_sha256": key, "role": "viewer"}]})
    )
    run_id = run_id_for("e-resume")
    runtime.store.client.hset(keys.run(run_id), "status", "succeeded")
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": "not-an-id"}
    with TestClient(create_app(runtime, include_console=False)) as http:
        reply = http.get(f"/v1/runs/{run_id}/events", headers=headers)
        assert reply.status_code == 422
        assert any(e["loc"][-1] == "last-event-id" for e in reply.json()["detail"])


def test_a_published_event_cannot_claim_what_tether_records_itself(runtime: Runtime) -> None:
    token, key = operators.new_token()
    keys_file = Path(runtime.settings.operators_file or "").with_name("keys.json")
    keys_file.write_text(json.dumps({"keys": [{"name": "billing", "key_sha256": key}]}))
    rt = Runtime(runtime.settings.model_copy(update={"api_keys_file": str(keys_file)}))
    auth = {"Authorization": f"Bearer {token}"}
    event = {"event_id": "e-claim", "agent": "calculator", "input": "What is 2 + 3?"}
    with TestClient(create_app(rt, include_console=False)) as http:
        for claim in ({"tether_shadow": {"primary_run_id": "run_x"}}, {"tether_eval": {}}):
            reply = http.post("/v1/events", json={**event, "metadata": claim}, headers=auth)
            assert reply.status_code == 422, claim
            assert "reserved" in json.dumps(reply.json()["detail"])
        fine = http.post(
            "/v1/events", json={**event, "metadata": {"customer_id": "c1"}}, headers=auth
        )
        assert fine.status_code == 202
