"""Who may decide escalations: operator credentials, and signed decisions.

With TETHER_OPERATORS_FILE set, the escalation service records a decision only
when it is signed by a configured operator, and records it under that
operator's name. The file is JSON, one entry per operator::

    {"operators": [{"name": "alice", "key_sha256": "<hex>"}]}

where ``key_sha256`` is ``sha256(token)`` of a random token the operator keeps
(`tether escalations operator-key` prints a new token and its line). The
client signs each decision with HMAC-SHA256 under that key; the token itself
never travels, so someone reading the queue sees a signature that fits that one
decision only (a replay of it is the decision it already was). The file lets
whoever reads it sign as anyone in it: keep it as secret as the tokens.

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
from pathlib import Path
from typing import Any

from tether.config import Settings
from tether.errors import ConfigError
from tether.messages import Decision


def key_of(token: str) -> bytes:
    """The signing key a token stands for (what the operators file keeps, in hex)."""
    return hashlib.sha256(token.strip().encode()).digest()


def new_token() -> tuple[str, str]:
    """A new random token and its key_sha256 for the operators file."""
    token = secrets.token_urlsafe(32)
    return token, key_of(token).hex()


def load(path: str) -> dict[str, bytes]:
    """Operator name -> signing key, from the operators file; ConfigError if it is unusable."""
    try:
        doc = json.loads(Path(path).read_text())
        entries = doc["operators"] if isinstance(doc, dict) else doc
        found = {str(e["name"]): bytes.fromhex(str(e["key_sha256"])) for e in entries}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"TETHER_OPERATORS_FILE {path!r} is unreadable: {exc}") from exc
    bad = [name for name, key in found.items() if len(key) != 32 or not name]
    if bad:
        raise ConfigError(f"TETHER_OPERATORS_FILE {path!r}: bad entries for {bad}")
    return found


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


def refusal(settings: Settings, decision: Decision) -> str | None:
    """Why the escalation service must not record ``decision``; None: it may.

    Always None without TETHER_OPERATORS_FILE.
    """
    if not settings.operators_file:
        return None
    operators = load(settings.operators_file)
    if not decision.operator or not decision.signature:
        return "the decision carries no operator credential (set TETHER_OPERATOR_TOKEN or --token-file)"
    key = operators.get(decision.operator)
    if key is None:
        return f"{decision.operator!r} is not a configured operator"
    if decision.by != decision.operator:
        return f"the decision names {decision.by!r} but is signed by {decision.operator!r}"
    expected = hmac.new(key, _payload(decision), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, decision.signature):
        return f"the signature does not match operator {decision.operator!r}'s credential"
    return None
