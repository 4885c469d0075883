"""Lua scripts, each declared once beside the Lua file it loads and sent by its SHA1.

A script's text crosses the wire once per Redis (SCRIPT LOAD), not with every
call: a call sends EVALSHA, directly (``Script.run``, which loads the script
where Redis answers NOSCRIPT and calls again) or in a pipeline (``Script.add``;
tether.store.batch.WriteBatch loads every script where a reply is NOSCRIPT). A
module declares its scripts at import, named after their files::

    INFLIGHT = Script.load("tether.executor", "inflight.lua")

so that ``registered()`` holds every script the process may call, which is what
a Redis that lost its script cache (a restart, a failover) is sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

import redis
from redis.client import Pipeline
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

# Every script declared in this process, by SHA1.
_REGISTERED: dict[str, Script] = {}


class Script:
    """A Lua script sent by its SHA1 (EVALSHA)."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        _REGISTERED.setdefault(self.sha, self)

    @classmethod
    def load(cls, package: str, filename: str) -> Script:
        """The script in ``filename``, a resource of ``package`` (the Lua beside its module),
        named by its path (``tether/executor/inflight.lua``)."""
        text = files(package).joinpath(filename).read_text()
        return cls(f"{package.replace('.', '/')}/{filename}", text)

    def __repr__(self) -> str:
        return f"Script({self.name!r}, sha={self.sha[:12]})"

    def run(
        self,
        client: redis.Redis | RedisCluster,
        keys: Sequence[Any] = (),
        args: Sequence[Any] = (),
    ) -> Any:
        """Call the script now; its reply.

        A Redis that does not hold it (restarted, failed over, or never sent it)
        answers NOSCRIPT having run nothing: it is loaded there and called again.
        """
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
        except NoScriptError:
            # On a cluster client, SCRIPT LOAD goes to every primary.
            client.script_load(self.text)
            return client.execute_command(*command)  # type: ignore[no-untyped-call]

    def add(self, pipe: Pipeline, numkeys: int, *args: Any) -> None:
        """Queue a call on ``pipe``; whoever executes it handles NOSCRIPT (WriteBatch)."""
        # Not pipe.evalsha: a Redis Cluster pipeline refuses that, and routes this by its keys.
        pipe.execute_command("EVALSHA", self.sha, numkeys, *args)  # type: ignore[no-untyped-call]


def registered() -> list[Script]:
    """Every script declared in this process, in the order they were declared."""
    return list(_REGISTERED.values())


def load_all(client: redis.Redis | RedisCluster) -> None:
    """Send every declared script to ``client``'s Redis (on a cluster, every primary)."""
    for script in registered():
        client.script_load(script.text)
