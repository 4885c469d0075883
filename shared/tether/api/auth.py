"""Who is calling: operators by their operator token, publishers by their API key.

Every request but /healthz and /readyz carries ``Authorization: Bearer <token>``.
An operator token (TETHER_OPERATORS_FILE) makes the caller that operator, with
the operator's role; a publisher key (TETHER_API_KEYS_FILE) may only publish
events. Without credentials a request is refused, unless the app was made for
local development (``anonymous=True``, only on a loopback address) and the request
itself comes from this machine (``from_this_machine``): then the caller is an
anonymous admin.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tether.api import publishers
from tether.errors import ConfigError
from tether.escalation import operators
from tether.escalation.operators import Role
from tether.runtime import Runtime

ANONYMOUS = "anonymous"
# Headers a proxy adds: a request that carries one was relayed for someone else.
RELAYED_BY = ("forwarded", "x-forwarded-for", "x-real-ip")


class CallerKind(StrEnum):
    operator = "operator"
    publisher = "publisher"
    anonymous = "anonymous"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller; ``token`` is an operator's own, to sign decisions with."""

    name: str
    kind: CallerKind
    role: Role | None
    token: str | None = None

    def may(self, needed: Role) -> bool:
        return self.role is not None and self.role.allows(needed)


def from_this_machine(request: Request) -> bool:
    """The request's socket peer is a loopback address and no proxy relayed it.

    Anonymous use rests on this. A proxy on this machine (or a forwarded port) would
    make every request loopback's, so a relayed one is never; and a server that trusts
    forwarding headers rewrites the peer from them, so their presence alone refuses.
    """
    if any(name in request.headers for name in RELAYED_BY):
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# Declared so that the OpenAPI schema says how to authenticate; a missing or malformed
# header is answered below, with what to send.
_BEARER = HTTPBearer(auto_error=False, description="an operator token or a publisher key")


def caller(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)
) -> Caller:
    """The caller of ``request``; 401 when it brings no credential this app knows."""
    # A session the console set up (tether.console) stands for its operator.
    found: Caller | None = getattr(request.state, "caller", None)
    if found is not None:
        return found
    token = credentials.credentials.strip() if credentials is not None else None
    settings = runtime_of(request).settings
    if token is None:
        if request.app.state.anonymous and from_this_machine(request):
            return Caller(ANONYMOUS, CallerKind.anonymous, Role.admin)
        local = " (anonymous use answers only unrelayed requests from loopback)"
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "no credential: send Authorization: Bearer <operator token or publisher key>"
            + (local if request.app.state.anonymous else ""),
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        operator = operators.authenticate(settings, token)
        publisher = None if operator is not None else publishers.authenticate(settings, token)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    if operator is not None:
        return Caller(operator.name, CallerKind.operator, operator.role, token)
    if publisher is not None:
        return Caller(publisher.name, CallerKind.publisher, None)
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "the bearer token is neither a configured operator's (TETHER_OPERATORS_FILE) nor a "
        "publisher's key (TETHER_API_KEYS_FILE)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _requiring(needed: Role) -> Any:
    def check(who: Caller = Depends(caller)) -> Caller:
        if not who.may(needed):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{who.kind} {who.name!r} may not do this: it needs the {needed} role "
                f"(has {who.role or 'none'}); an admin sets roles in TETHER_OPERATORS_FILE",
            )
        return who

    return Depends(check)


def publisher_or_approver(who: Caller = Depends(caller)) -> Caller:
    """Publishing events: publishers, and operators who may decide."""
    if who.kind is CallerKind.publisher or who.may(Role.approver):
        return who
    raise HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"{who.kind} {who.name!r} may not publish events: use a publisher key "
        "(TETHER_API_KEYS_FILE) or an approver's token",
    )


viewer = _requiring(Role.viewer)
approver = _requiring(Role.approver)
admin = _requiring(Role.admin)
