"""The run page's forms: retry an ended run, or fork it from a step.

Both start a new run through intake as tether.client does for the CLI and the API, and
lead to the new run's page; only an approver or an admin may start one, and every form
carries the session's CSRF token.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from tether import client
from tether.console import access
from tether.console.access import PREFIX
from tether.console.sessions import Session
from tether.errors import TetherError
from tether.escalation.operators import Role

router = APIRouter()

Viewer = Annotated[Session, Depends(access.viewer)]


# How long a form waits for intake to create the new run before leading to its page.
APPEAR_WAIT_S = 5.0


def _to_run(run_id: str, **said: str) -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/runs/{run_id}?{urlencode(said)}", status_code=303)


async def _started(request: Request, original: str, new_run: str, what: str) -> RedirectResponse:
    """To the new run's page once intake has created it; until then its page would
    say there is no such run, so the original's page says it is still queued."""
    store = access.runtime(request).store
    deadline = time.monotonic() + APPEAR_WAIT_S
    while store.status(new_run) is None:
        if time.monotonic() >= deadline:
            return _to_run(original, notice=f"{what} is queued as run {new_run}")
        await asyncio.sleep(0.05)
    return _to_run(new_run, notice=what)


@router.post("/runs/{run_id}/retry")
async def retry(request: Request, run_id: str, session: Viewer) -> RedirectResponse:
    access.allowed(session, Role.approver)
    await access.checked_form(request, session)
    try:
        new_run, _ = client.retry(run_id, runtime=access.runtime(request))
    except TetherError as exc:
        return _to_run(run_id, error=f"{run_id} was not retried: {exc}")
    return await _started(
        request, run_id, new_run, f"retry of {run_id}, started by {session.operator}"
    )


@router.post("/runs/{run_id}/fork")
async def fork(request: Request, run_id: str, session: Viewer) -> RedirectResponse:
    access.allowed(session, Role.approver)
    form = await access.checked_form(request, session)
    raw = form.get("from_step")
    try:
        step = int(raw) if isinstance(raw, str) else -1
    except ValueError:
        step = -1
    if step < 0:
        return _to_run(run_id, error=f"{run_id} was not forked: pick a step (0 or more)")
    try:
        new_run, _ = client.fork(run_id, step, runtime=access.runtime(request))
    except TetherError as exc:
        return _to_run(run_id, error=f"{run_id} was not forked: {exc}")
    return await _started(
        request,
        run_id,
        new_run,
        f"fork of {run_id} from step {step}, started by {session.operator}",
    )
