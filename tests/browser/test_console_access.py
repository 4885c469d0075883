"""Anonymous use of the console is for `tether dev` only: the app must allow it and
each request must come from the loopback interface; even then its forms need the
session's CSRF token. No browser or workers needed: the app in this process."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tether.api.app import create_app
from tether.runtime import Runtime

LOOPBACK = ("127.0.0.1", 50000)
ELSEWHERE = ("10.1.2.3", 50000)


def test_anonymous_on_loopback_gets_a_session_that_still_needs_csrf(runtime: Runtime) -> None:
    with TestClient(create_app(runtime, anonymous=True), client=LOOPBACK) as browser:
        inbox = browser.get("/console/inbox")
        assert inbox.status_code == 200
        assert '<span id="operator">dev</span>' in inbox.text
        refused = browser.post("/console/inbox/approve-all", data={"agent": "x"})
        assert refused.status_code == 403
        assert "CSRF" in refused.text


def test_anonymous_use_is_refused_to_anyone_off_loopback(runtime: Runtime) -> None:
    app = create_app(runtime, anonymous=True)
    with TestClient(app, client=ELSEWHERE, follow_redirects=False) as remote:
        page = remote.get("/console/inbox")
        assert page.status_code == 303
        assert page.headers["location"] == "/console/sign-in?next=%2Fconsole%2Finbox"
        sign_in = remote.get("/console/sign-in")
        assert sign_in.status_code == 200
        assert "tether_console=" not in sign_in.headers.get("set-cookie", "")
    # A session made on loopback is worth nothing from elsewhere.
    with TestClient(app, client=LOOPBACK) as local:
        local.get("/console/inbox")
        session = local.cookies.get("tether_console")
    assert session
    for where, status in ((LOOPBACK, 200), (ELSEWHERE, 303)):
        with TestClient(
            app, client=where, follow_redirects=False, cookies={"tether_console": session}
        ) as someone:
            assert someone.get("/console/inbox").status_code == status


def test_without_anonymous_use_loopback_signs_in_too(runtime: Runtime) -> None:
    with TestClient(create_app(runtime), client=LOOPBACK, follow_redirects=False) as local:
        assert local.get("/console/").status_code == 303
        assert local.post("/console/inbox/approve-all").status_code == 401
