"""Who is looking at the console, and what they may do.

Operators sign in with their operator token (TETHER_OPERATORS_FILE); each request
checks the session against the file again, so removing an operator or changing
their role takes effect at their next click. Every form carries the session's CSRF
token: a form without it is refused (403). Anonymous use exists only for `tether dev`:
the app must be built with ``anonymous_on_loopback`` and the request must come from
the loopback interface, unrelayed by any proxy (tether.api.auth.from_this_machine), and
even then a session (with its CSRF token) is made for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import FormData

from tether.api.auth import from_this_machine
from tether.console import sessions
from tether.console.sessions import Session
from tether.escalation import operators
from tether.escalation.operators import Role
from tether.runtime import Runtime

ANONYMOUS = "dev"
PREFIX = "/console"


@dataclass(frozen=True)
class ConsoleConfig:
    """What the app that mounts the console tells it (tether.console.pages.include)."""

    runtime: Runtime
    anonymous_on_loopback: bool = False


def config(request: Request) -> ConsoleConfig:
    found = getattr(request.app.state, "console", None)
    if not isinstance(found, ConsoleConfig):
        raise RuntimeError("the console is not set up: call tether.console.pages.include(app, rt)")
    return found


def runtime(request: Request) -> Runtime:
    return config(request).runtime


def anonymous_allowed(request: Request) -> bool:
    return config(request).anonymous_on_loopback and from_this_machine(request)


def _current(request: Request) -> Session | None:
    """The session of this request as the operators file stands now; None: not signed in."""
    rt = runtime(request)
    session = sessions.load(rt.store.client, request.cookies.get(sessions.COOKIE))
    if session is None:
        return None
    if session.token is None:
        # The anonymous session of `tether dev`: good only where it was made.
        return session if anonymous_allowed(request) else None
    operator = operators.authenticate(rt.settings, session.token)
    if operator is None or operator.name != session.operator:
        return None
    return session.model_copy(update={"role": operator.role})


class SignInRequired(Exception):
    """A page asked for without a session: the browser goes to the sign-in page."""

    def __init__(self, back_to: str) -> None:
        super().__init__(back_to)
        self.back_to = back_to


def viewer(request: Request) -> Session:
    """The signed-in session (any role). A page without one sends the browser to sign in;
    anything else without one is refused (401)."""
    session = _current(request)
    if session is not None:
        return session
    if request.method == "GET":
        # Back to the same page with its filters once signed in.
        query = request.url.query
        raise SignInRequired(request.url.path + (f"?{query}" if query else ""))
    raise HTTPException(401, "no console session: sign in at /console/sign-in first")


def allowed(session: Session, needed: Role) -> None:
    if not session.role.allows(needed):
        raise HTTPException(
            403,
            f"operator {session.operator!r} is a {session.role}; this needs {needed} "
            "(the role is set in TETHER_OPERATORS_FILE)",
        )


async def checked_form(request: Request, session: Session) -> FormData:
    """The posted form, once its CSRF token is the session's; 403 otherwise."""
    form = await request.form()
    sent = form.get("csrf")
    if not session.csrf_matches(sent if isinstance(sent, str) else None):
        raise HTTPException(
            403, "the form carries no valid CSRF token: reload the page and submit it again"
        )
    return form
