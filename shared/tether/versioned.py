"""Versioned documents in Redis: a writer commits only over the version it read.

Run state and escalations are both stored this way, so a duplicate delivery or
a concurrent writer can never overwrite a newer commit.
"""

from __future__ import annotations

from importlib.resources import files

import redis

from tether.errors import StaleStateError

_SCRIPT = files("tether").joinpath("versioned.lua").read_text()


class VersionedDocs:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._cas = client.register_script(_SCRIPT)

    def read(self, key: str) -> tuple[str, int] | None:
        doc, version = self._client.hmget(key, ["doc", "version"])
        if doc is None:
            return None
        return str(doc), int(version or 0)

    def write(self, key: str, doc: str, expected_version: int) -> int:
        """Commit ``doc`` over ``expected_version``; raises StaleStateError if it lost."""
        new_version = int(self._cas(keys=[key], args=[expected_version, doc]))
        if new_version < 0:
            raise StaleStateError(
                f"{key} changed since version {expected_version} was read; reload and decide again"
            )
        return new_version
