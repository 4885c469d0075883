"""The console's templates: Jinja2, autoescaped, so whatever a model or a tool wrote is
shown as text."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from tether.console import reads
from tether.console.access import PREFIX
from tether.console.sessions import Session
from tether.escalation.operators import Role
from tether.store.state import RunStatus

_HERE = Path(__file__).parent

# A second line behind autoescaping: no script but the console's own file runs, and no
# other site frames the console to click its buttons. Pages show what only a signed-in
# operator may read: no cache keeps them (a shared proxy's, or the browser's after
# signing out).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)
templates.env.filters["pretty"] = reads.pretty
templates.env.globals["prefix"] = PREFIX
templates.env.globals["statuses"] = [s.value for s in RunStatus]


# What a page says happened (a decision taken, a letter replayed) comes in its address,
# from the console's own redirect after a form.
SAID = ("notice", "error")


def _said(request: Request, context: dict[str, Any]) -> dict[str, Any]:
    """What the page may say happened. Another site's link could put anything in the
    address as if the console said it ("your session expired: paste your token at
    ..."): browsers say where a navigation came from (Sec-Fetch-Site), and what the
    address says is shown only after the console's own redirect (or to a client that
    sends no such header)."""
    site = request.headers.get("sec-fetch-site")
    trusted = site is None or site == "same-origin"
    said: dict[str, Any] = {}
    for key in SAID:
        in_address = request.query_params.get(key)
        if key not in context:
            said[key] = in_address if trusted else None
        elif not trusted and context[key] is not None and context[key] == in_address:
            said[key] = None
    return said


def render(
    request: Request, name: str, session: Session | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context.update(_said(request, context))
    response = templates.TemplateResponse(
        request,
        name,
        {"session": session, "can_decide": _can_decide(session), "now": _now(), **context},
        status_code=status_code,
    )
    response.headers.update(HEADERS)
    return response


def _can_decide(session: Session | None) -> bool:
    return session is not None and session.role.allows(Role.approver)


def _now() -> datetime:
    return datetime.now(UTC)
