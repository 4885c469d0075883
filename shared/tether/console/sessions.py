"""Console sessions, kept server-side in Redis with an expiry.

The browser holds the session's cookie, HttpOnly and SameSite=Strict: the session's
random id and a random secret of its own. The session holds who signed in, their CSRF
token, and the operator token they signed in with, sealed under that secret: a decision
is signed with the token (tether.escalation.operators.sign) as that operator, exactly as
the CLI signs one. Redis keeps only the sealed token and a hash of the secret, so whoever
reads ``tether:console:*`` (or a dump or replica of it) can neither sign as the operators
signed in nor take over their sessions: that takes the browser's cookie as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.escalation.operators import Role

COOKIE = "tether_console"
# The sign-in form's double-submit token, before any session exists.
SIGN_IN_COOKIE = "tether_console_sign_in"
TTL_S = 12 * 3600
_PREFIX = "tether:console:session:"
# The cookie's value: "<id>.<secret>" (token_urlsafe never writes a dot).
_SEPARATOR = "."
_PAD_CONTEXT = b"tether console session token\0"


class Session(BaseModel):
    """Who is signed in, what they may do, and the CSRF token their forms carry."""

    model_config = ConfigDict(frozen=True)

    operator: str = Field(min_length=1)
    role: Role
    csrf: str = Field(min_length=16)
    # None for the anonymous session of `tether dev` on loopback: its decisions go unsigned.
    token: str | None = None

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(self.csrf, sent)


class _Stored(BaseModel):
    """What Redis holds of a session: nothing that opens it or signs without the cookie."""

    operator: str
    role: Role
    csrf: str
    secret_sha256: str
    sealed_token: str | None = None


def _key(session_id: str) -> str:
    return f"{_PREFIX}{session_id}"


def _pad(secret: str, session_id: str, size: int) -> bytes:
    # One key stream per session (a 256-bit secret of its own), used for one value only.
    seed = _PAD_CONTEXT + secret.encode() + b"\0" + session_id.encode()
    return hashlib.shake_256(seed).digest(size)


def _seal(token: str, secret: str, session_id: str) -> str:
    plain = token.encode()
    pad = _pad(secret, session_id, len(plain))
    return bytes(a ^ b for a, b in zip(plain, pad, strict=True)).hex()


def _unseal(sealed: str, secret: str, session_id: str) -> str:
    data = bytes.fromhex(sealed)
    pad = _pad(secret, session_id, len(data))
    return bytes(a ^ b for a, b in zip(data, pad, strict=True)).decode()


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    client: redis.Redis, operator: str, role: Role, token: str | None
) -> tuple[str, Session]:
    """A new session for ``operator``: the cookie's value and the session."""
    session_id, secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session = Session(operator=operator, role=role, csrf=secrets.token_urlsafe(32), token=token)
    stored = _Stored(
        operator=operator,
        role=role,
        csrf=session.csrf,
        secret_sha256=_hash(secret),
        sealed_token=_seal(token, secret, session_id) if token is not None else None,
    )
    client.set(_key(session_id), stored.model_dump_json(), ex=TTL_S)
    return f"{session_id}{_SEPARATOR}{secret}", session


def _parts(cookie: str | None) -> tuple[str, str] | None:
    if not cookie or len(cookie) > 200:
        return None
    session_id, _, secret = cookie.partition(_SEPARATOR)
    return (session_id, secret) if session_id and secret else None


def load(client: redis.Redis, cookie: str | None) -> Session | None:
    """The live session this cookie opens; None when there is none, it expired, or the
    cookie's secret is not the session's."""
    parts = _parts(cookie)
    if parts is None:
        return None
    session_id, secret = parts
    raw = client.get(_key(session_id))
    if raw is None:
        return None
    try:
        stored = _Stored.model_validate_json(raw)
        if not hmac.compare_digest(stored.secret_sha256, _hash(secret)):
            return None
        token = (
            _unseal(stored.sealed_token, secret, session_id)
            if stored.sealed_token is not None
            else None
        )
        return Session(operator=stored.operator, role=stored.role, csrf=stored.csrf, token=token)
    except (ValidationError, ValueError):
        # A session written before sessions were sealed, or not by this module.
        return None


def end(client: redis.Redis, cookie: str | None) -> None:
    parts = _parts(cookie)
    if parts is not None:
        client.delete(_key(parts[0]))
