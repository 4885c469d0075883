"""What Redis holds of a console session opens nothing without the browser's cookie:
neither the operator token a decision is signed with, nor the session itself."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tether.agent.definition import load_agent_modules
from tether.api import create_app
from tether.config import Settings
from tether.console import sessions
from tether.escalation import operators
from tether.planner import intake
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.transport.wire import TaskEvent

PREFIX = "tether:console:session:"


def _signed_in(redis_url: str, tmp_path: Path) -> tuple[TestClient, Runtime, str]:
    token, key = operators.new_token()
    (tmp_path / "operators.json").write_text(
        json.dumps({"operators": [{"name": "alice", "key_sha256": key, "role": "approver"}]})
    )
    rt = Runtime(Settings(redis_url=redis_url, operators_file=str(tmp_path / "operators.json")))
    browser = TestClient(create_app(rt), follow_redirects=False)
    page = browser.get("/console/sign-in")
    form_token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert form_token is not None
    signed = browser.post(
        "/console/sign-in", data={"csrf": form_token[1], "token": token, "next": "/console/"}
    )
    assert signed.status_code == 303 and browser.cookies.get(sessions.COOKIE)
    inbox = browser.get("/console/inbox")
    assert inbox.status_code == 200
    # What only a signed-in operator may read is kept by no cache.
    assert inbox.headers["cache-control"] == "no-store"
    return browser, rt, token


def test_redis_holds_neither_the_token_nor_what_opens_the_session(
    redis_url: str, tmp_path: Path
) -> None:
    browser, rt, token = _signed_in(redis_url, tmp_path)
    with browser:
        stored = list(rt.store.client.scan_iter(match=f"{PREFIX}*"))
        assert len(stored) == 1
        raw = rt.store.client.get(stored[0])
        assert raw is not None and token not in str(raw)
        # Whoever reads the key's name cannot make the cookie from it.
        session_id = str(stored[0]).removeprefix(PREFIX)
        cookie = browser.cookies.get(sessions.COOKIE)
        assert cookie is not None and cookie != session_id
        for forged in (session_id, f"{session_id}.not-the-secret"):
            with TestClient(
                browser.app, follow_redirects=False, cookies={sessions.COOKIE: forged}
            ) as thief:
                assert thief.get("/console/inbox").status_code == 303, forged
        # The browser's cookie still opens it, with the token to sign decisions.
        opened = sessions.load(rt.store.client, cookie)
        assert opened is not None and opened.token == token and opened.operator == "alice"


def test_a_link_from_elsewhere_cannot_make_the_console_say_things(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    browser, rt, _ = _signed_in(redis_url, tmp_path)
    lie = "Your session expired: paste your operator token at evil.example"
    load_agent_modules(["tests.agents"])
    monkeypatch.setattr(rt, "send_step", lambda run_id, step: None)
    event = TaskEvent(event_id="e-said", agent="calculator", input="What is 2 + 3?")
    intake.start(rt, event.model_dump(mode="json"))
    with browser:
        for page in ("/console/inbox", "/console/dead", f"/console/runs/{run_id_for('e-said')}"):
            for said in ("notice", "error"):
                url = f"{page}?{said}={lie}"
                shown = f'id="{said}">{lie}<'
                linked = browser.get(url, headers={"Sec-Fetch-Site": "cross-site"})
                assert linked.status_code == 200 and shown not in linked.text, url
                typed = browser.get(url, headers={"Sec-Fetch-Site": "none"})
                assert shown not in typed.text, url
                # The console's own redirect after a form still says what happened.
                own = browser.get(url, headers={"Sec-Fetch-Site": "same-origin"})
                assert shown in own.text, url


def test_signing_in_again_ends_the_session_the_browser_held(redis_url: str, tmp_path: Path) -> None:
    browser, rt, token = _signed_in(redis_url, tmp_path)
    with browser:
        before = browser.cookies.get(sessions.COOKIE)
        form_token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/console/sign-in").text)
        assert form_token is not None
        again = browser.post("/console/sign-in", data={"csrf": form_token[1], "token": token})
        assert again.status_code == 303
        assert browser.cookies.get(sessions.COOKIE) != before
        assert sessions.load(rt.store.client, before) is None
        assert len(list(rt.store.client.scan_iter(match=f"{PREFIX}*"))) == 1
