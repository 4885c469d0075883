"""The console's operations pages: stats per agent, dead letters (an admin replays or
deletes them), and the service queues with the consumers reading them."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tether.console import access
from tether.console.access import PREFIX
from tether.console.rendering import render
from tether.console.sessions import Session
from tether.console.stats_view import stats_view
from tether.errors import TetherError
from tether.escalation.operators import Role
from tether.insights import stats as run_stats
from tether.query import deadletters
from tether.query.queues import queues as queue_view

router = APIRouter()

Viewer = Annotated[Session, Depends(access.viewer)]
WINDOWS = ("1h", "24h", "7d")


@router.get("/stats")
def stats(request: Request, session: Viewer, since: str = "24h") -> HTMLResponse:
    if since not in WINDOWS:
        raise HTTPException(400, f"no window {since!r}: one of {', '.join(WINDOWS)}")
    view = stats_view(access.runtime(request), run_stats.parse_duration(since))
    return render(request, "stats.html", session, view=view, since=since, windows=WINDOWS)


@router.get("/dead")
def dead(request: Request, session: Viewer) -> HTMLResponse:
    page = deadletters.list_dead(access.runtime(request), limit=100)
    return render(
        request,
        "dead.html",
        session,
        page=page,
        can_manage=session.role.allows(Role.admin),
    )


def _back(**said: str) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/dead?{urlencode(said)}", status_code=303)


@router.post("/dead/{entry_id}/replay")
async def replay(request: Request, entry_id: str, session: Viewer) -> RedirectResponse:
    access.allowed(session, Role.admin)
    await access.checked_form(request, session)
    try:
        letter = deadletters.replay(access.runtime(request), entry_id)
    except TetherError as exc:
        return _back(error=f"{entry_id} was not replayed: {exc}")
    if letter is None:
        return _back(error=f"no replayable dead letter {entry_id} (replayed or deleted already?)")
    return _back(notice=f"replayed {entry_id} ({letter.task}) as {session.operator}")


@router.post("/dead/{entry_id}/delete")
async def delete(request: Request, entry_id: str, session: Viewer) -> RedirectResponse:
    access.allowed(session, Role.admin)
    await access.checked_form(request, session)
    letter = deadletters.delete(access.runtime(request), entry_id)
    if letter is None:
        return _back(error=f"no dead letter {entry_id} (deleted already?)")
    return _back(notice=f"deleted {entry_id} ({letter.task}) as {session.operator}")


@router.get("/queues")
def queues(request: Request, session: Viewer) -> HTMLResponse:
    return render(request, "queues.html", session, view=queue_view(access.runtime(request)))
