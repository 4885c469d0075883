"""The console's pages: sign-in, runs, a run's timeline, the escalation inbox.

``include(app, runtime)`` mounts them under /console on the HTTP API's app (or any
FastAPI app). Pages are rendered on the server with Jinja2, autoescaped: whatever a
model or a tool wrote is shown as text. Live parts of a page re-read a fragment
(``…/live``) with a few lines of JavaScript of our own (static/console.js).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from tether.console import (
    access,
    decisions,
    memory_pages,
    operations,
    reads,
    run_actions,
    sessions,
)
from tether.console.access import PREFIX, ConsoleConfig, SignInRequired
from tether.console.rendering import render
from tether.console.sessions import Session
from tether.escalation import operators
from tether.escalation.operators import Role
from tether.store.state import RunStatus

_HERE = Path(__file__).parent
_STATIC = {p.name: p for p in (_HERE / "static").iterdir() if p.is_file()}

router = APIRouter(prefix=PREFIX, include_in_schema=False)
router.include_router(decisions.router)
router.include_router(operations.router)
router.include_router(run_actions.router)
router.include_router(memory_pages.router)

Viewer = Annotated[Session, Depends(access.viewer)]


def include(app: FastAPI) -> None:
    """Mount the console on ``app`` (tether.api.app.create_app does), over the Runtime in
    ``app.state.runtime``. ``app.state.anonymous`` (`tether dev` on a loopback address
    only) lets requests from the loopback interface in without signing in."""
    app.state.console = ConsoleConfig(
        app.state.runtime, bool(getattr(app.state, "anonymous", False))
    )
    app.include_router(router)
    app.add_exception_handler(SignInRequired, _to_sign_in)
    # The address `tether console` prints leads to the console.
    app.add_api_route("/", _to_console, include_in_schema=False)


def _to_console() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/", status_code=307)


async def _to_sign_in(request: Request, exc: Exception) -> Response:
    back = exc.back_to if isinstance(exc, SignInRequired) else PREFIX + "/"
    return RedirectResponse(f"{PREFIX}/sign-in?{urlencode({'next': back})}", status_code=303)


def _safe_next(target: str | None) -> str:
    # Only a path of the console itself: never an address elsewhere.
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/"


def _session_cookie(response: Response, request: Request, session_id: str) -> None:
    response.set_cookie(
        sessions.COOKIE,
        session_id,
        max_age=sessions.TTL_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX,
    )


@router.get("/static/{name}")
def static(name: str) -> FileResponse:
    found = _STATIC.get(name)
    if found is None:
        raise HTTPException(404, f"no console asset named {name!r}")
    return FileResponse(found)


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> Response:
    rt = access.runtime(request)
    if access.anonymous_allowed(request):
        session_id, _ = sessions.create(rt.store.client, access.ANONYMOUS, Role.admin, None)
        response: Response = RedirectResponse(_safe_next(next), status_code=303)
        _session_cookie(response, request, session_id)
        return response
    form_token = secrets.token_urlsafe(24)
    response = render(
        request,
        "sign_in.html",
        None,
        next=_safe_next(next),
        form_token=form_token,
        configured=bool(rt.settings.operators_file),
        error=None,
    )
    response.set_cookie(
        sessions.SIGN_IN_COOKIE, form_token, httponly=True, samesite="strict", path=PREFIX
    )
    return response


@router.post("/sign-in")
async def sign_in(request: Request) -> Response:
    rt = access.runtime(request)
    form = await request.form()
    sent, expected = form.get("csrf"), request.cookies.get(sessions.SIGN_IN_COOKIE)
    if not isinstance(sent, str) or not expected or not secrets.compare_digest(sent, expected):
        raise HTTPException(403, "the sign-in form carries no valid CSRF token: reload it")
    token = form.get("token")
    operator = operators.authenticate(rt.settings, token if isinstance(token, str) else "")
    target = _safe_next(str(form.get("next") or ""))
    if operator is None:
        return render(
            request,
            "sign_in.html",
            None,
            status_code=401,
            next=target,
            form_token=expected,
            configured=bool(rt.settings.operators_file),
            error="That token belongs to no operator in TETHER_OPERATORS_FILE.",
        )
    assert isinstance(token, str)
    # A sign-in always starts a new session: whatever session this browser held ends here,
    # so no id known before signing in (one planted, or another operator's) outlives it.
    sessions.end(rt.store.client, request.cookies.get(sessions.COOKIE))
    session_id, _ = sessions.create(rt.store.client, operator.name, operator.role, token.strip())
    response = RedirectResponse(target, status_code=303)
    _session_cookie(response, request, session_id)
    response.delete_cookie(sessions.SIGN_IN_COOKIE, path=PREFIX)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, session: Viewer) -> Response:
    await access.checked_form(request, session)
    sessions.end(access.runtime(request).store.client, request.cookies.get(sessions.COOKIE))
    response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    response.delete_cookie(sessions.COOKIE, path=PREFIX)
    return response


def _runs_context(request: Request) -> dict[str, Any]:
    params = request.query_params
    agent, status = params.get("agent") or None, params.get("status") or None
    include_eval = params.get("include_eval") == "1"
    if status is not None and status not in {s.value for s in RunStatus}:
        raise HTTPException(400, f"no run status {status!r}; one of {', '.join(RunStatus)}")
    page = reads.runs_page(access.runtime(request), agent, status, include_eval)
    return {
        "runs": page.runs,
        "agent": agent or "",
        "status": status or "",
        "include_eval": include_eval,
        "live_url": _live_url(request, "runs-live"),
    }


@router.get("/")
def runs(request: Request, session: Viewer) -> HTMLResponse:
    return render(request, "runs.html", session, **_runs_context(request))


@router.get("/runs-live")
def runs_live(request: Request, session: Viewer) -> HTMLResponse:
    return render(request, "runs_rows.html", session, **_runs_context(request))


def _live_url(request: Request, fragment: str) -> str:
    """Where the page re-reads its rows from, with the filters it was opened with."""
    query = str(request.url.query)
    return f"{PREFIX}/{fragment}" + (f"?{query}" if query else "")


def _timeline_context(request: Request, run_id: str) -> dict[str, Any]:
    found = reads.timeline(access.runtime(request), run_id)
    if found is None:
        raise HTTPException(
            404,
            f"no run {run_id!r}: it never started (see `tether runs rejected`) or it expired",
        )
    return {"t": found, "run_id": run_id}


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str, session: Viewer) -> HTMLResponse:
    return render(request, "run.html", session, **_timeline_context(request, run_id))


@router.get("/runs/{run_id}/live")
def run_live(request: Request, run_id: str, session: Viewer) -> HTMLResponse:
    return render(request, "run_body.html", session, **_timeline_context(request, run_id))


def _inbox_context(request: Request) -> dict[str, Any]:
    wanted = reads.InboxFilter(
        agent=request.query_params.get("agent") or None,
        tool=request.query_params.get("tool") or None,
    )
    return {
        "items": reads.inbox(access.runtime(request), wanted),
        "wanted": wanted,
        "live_url": _live_url(request, "inbox-live"),
    }


@router.get("/inbox")
def inbox(request: Request, session: Viewer) -> HTMLResponse:
    return render(request, "inbox.html", session, **_inbox_context(request))


@router.get("/inbox-live")
def inbox_live(request: Request, session: Viewer) -> HTMLResponse:
    return render(request, "inbox_items.html", session, **_inbox_context(request))
