"""Who may decide escalations: operator credentials, and signed decisions.

With TETHER_OPERATORS_FILE set, the escalation service records a decision only
when it is signed by a configured operator, and records it under that
operator's name. The file is JSON, one entry per operator::

    {"operators": [{"name": "alice", "key_sha256": "<hex>", "role": "approver"}]}

where ``key_sha256`` is ``sha256(token)`` of a random token the operator keeps
(`tether escalations operator-key` prints a new token and its line). The
client signs each decision with HMAC-SHA256 under that key; the token itself
never travels, so someone reading the queue sees a signature that fits that one
decision only (a replay of it is the decision it already was). The file lets
whoever reads it sign as anyone in it: keep it as secret as the tokens.

``role`` says what the operator may do: ``viewer`` reads, ``approver`` also decides
escalations, ``admin`` also replays and deletes dead letters. An entry without one is an
approver (files written before roles existed keep working). The HTTP API and the console
check the role of their callers; the escalation service checks it again for every decision
(``refusal``), so a viewer's token signs no decision that counts, whichever client sent it.

Unset, decisions are taken as they come, with ``--by`` as their free-text
author (the behaviour before operators existed, and `make demo`'s).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.config import Settings
from tether.errors import ConfigError
from tether.transport.wire import Decision


class Role(StrEnum):
    """What an operator may do, each role including the ones before it."""

    viewer = "viewer"
    approver = "approver"
    admin = "admin"

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.viewer: 0, Role.approver: 1, Role.admin: 2}


class Operator(BaseModel):
    """One entry of the operators file."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1)
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    role: Role = Role.approver

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.key_sha256)


def key_of(token: str) -> bytes:
    """The signing key a token stands for (what the operators file keeps, in hex)."""
    return hashlib.sha256(token.strip().encode()).digest()


def new_token() -> tuple[str, str]:
    """A new random token and its key_sha256 for the operators file."""
    token = secrets.token_urlsafe(32)
    return token, key_of(token).hex()


def load_operators(path: str) -> dict[str, Operator]:
    """Operator name -> entry, from the operators file; ConfigError if it is unusable."""
    try:
        doc = json.loads(Path(path).read_text())
        entries = doc["operators"] if isinstance(doc, dict) else doc
        if not isinstance(entries, list):
            raise TypeError("'operators' must be a list of entries")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"TETHER_OPERATORS_FILE {path!r} is unreadable: {exc}") from exc
    found: dict[str, Operator] = {}
    bad: list[str] = []
    for entry in entries:
        try:
            operator = Operator.model_validate(entry)
        except ValidationError as exc:
            name = entry.get("name") if isinstance(entry, dict) else None
            bad.append(f"{name!r}: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}")
            continue
        found[operator.name] = operator
    if bad:
        raise ConfigError(
            f"TETHER_OPERATORS_FILE {path!r}: bad entries {bad}; each needs a name, a "
            "64-hex-digit key_sha256 and, optionally, a role of viewer, approver or admin"
        )
    return found


def load(path: str) -> dict[str, bytes]:
    """Operator name -> signing key, from the operators file; ConfigError if it is unusable."""
    return {name: operator.key for name, operator in load_operators(path).items()}


def authenticate(settings: Settings, token: str) -> Operator | None:
    """The configured operator whose token this is; None for a token no entry holds
    (or no operators file)."""
    if not settings.operators_file or not token.strip():
        return None
    key = key_of(token)
    for operator in load_operators(settings.operators_file).values():
        if hmac.compare_digest(operator.key, key):
            return operator
    return None


def _payload(decision: Decision) -> bytes:
    """What a signature covers: every field that changes what the decision does or says."""
    fields: dict[str, Any] = decision.model_dump(
        mode="json", exclude={"signature"}, exclude_none=False
    )
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(decision: Decision, token: str) -> Decision:
    """The decision as operator ``decision.by``, signed, with where it was made from."""
    origin = decision.model_copy(
        update={
            "operator": decision.by,
            "client_host": socket.gethostname(),
            "client_pid": os.getpid(),
            "signature": None,
        }
    )
    mac = hmac.new(key_of(token), _payload(origin), hashlib.sha256).hexdigest()
    return origin.model_copy(update={"signature": mac})


def check(settings: Settings) -> None:
    """At the escalation service's start: an unusable operators file would refuse every
    decision, so it stops the service instead (ConfigError). The file is read again for
    each decision, so operators can be added or removed without a restart."""
    if settings.operators_file:
        load(settings.operators_file)


@dataclass(frozen=True)
class Refusal:
    """Why the escalation service must not record a decision."""

    # A short fixed word: the label the refusal is counted and dead-lettered under.
    code: str
    reason: str

    def __str__(self) -> str:
        return self.reason


# The least role that may decide an escalation, wherever the decision comes from: the
# HTTP API and the console check it for their callers, this service for every decision.
DECIDES = Role.approver


def refusal(settings: Settings, decision: Decision) -> Refusal | None:
    """Why the escalation service must not record ``decision``; None: it may.

    Always None without TETHER_OPERATORS_FILE.
    """
    if not settings.operators_file:
        return None
    found = load_operators(settings.operators_file)
    if not decision.operator or not decision.signature:
        return Refusal(
            "unsigned",
            "the decision carries no operator credential (set TETHER_OPERATOR_TOKEN or "
            "--token-file)",
        )
    operator = found.get(decision.operator)
    if operator is None:
        return Refusal("bad_signature", f"{decision.operator!r} is not a configured operator")
    if decision.by != decision.operator:
        return Refusal(
            "bad_signature",
            f"the decision names {decision.by!r} but is signed by {decision.operator!r}",
        )
    expected = hmac.new(operator.key, _payload(decision), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, decision.signature):
        return Refusal(
            "bad_signature",
            f"the signature does not match operator {decision.operator!r}'s credential",
        )
    if not operator.role.allows(DECIDES):
        return Refusal(
            "role",
            f"operator {operator.name!r} is a {operator.role}, who may read escalations but "
            "not decide them: ask an approver or an admin to decide, or give "
            f"{operator.name!r} the approver role in TETHER_OPERATORS_FILE",
        )
    return None
