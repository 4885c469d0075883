"""Who may publish events through the HTTP API: keys of upstream publishers.

TETHER_API_KEYS_FILE is JSON, one entry per publisher::

    {"keys": [{"name": "billing-service", "key_sha256": "<hex>"}]}

where ``key_sha256`` is ``sha256(key)`` of a random key the publisher sends as
``Authorization: Bearer <key>``; the file holds no key. It is read again for each
request, so keys can be added or removed without a restart.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.config import Settings
from tether.errors import ConfigError
from tether.escalation.operators import key_of


class Publisher(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(min_length=1)
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


def load(path: str) -> list[Publisher]:
    """The publishers in the keys file; ConfigError if it is unusable."""
    try:
        doc = json.loads(Path(path).read_text())
        entries = doc["keys"] if isinstance(doc, dict) else doc
        return [Publisher.model_validate(entry) for entry in entries]
    except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise ConfigError(
            f"TETHER_API_KEYS_FILE {path!r} is unusable: {exc}; it needs "
            '{"keys": [{"name": ..., "key_sha256": <64 hex digits>}]}'
        ) from exc


def authenticate(settings: Settings, key: str) -> Publisher | None:
    """The publisher whose key this is; None for a key no entry holds (or no keys file)."""
    if not settings.api_keys_file or not key.strip():
        return None
    digest = key_of(key)
    for publisher in load(settings.api_keys_file):
        if hmac.compare_digest(bytes.fromhex(publisher.key_sha256), digest):
            return publisher
    return None
