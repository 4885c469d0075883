"""Which Redis a CLI command reads, and failing in a second when it cannot.

A worker's client rides out a Redis restart of about a minute (tether.store.connection.connect);
a person at a terminal wants the one-line reason now. `tether dev` writes
DEV_ENV, which later commands in any shell read for what the environment does not set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError

if TYPE_CHECKING:
    from tether.runtime import Runtime

DEV_ENV = Path(".tether/dev.env")


class RedisUnreachableError(TetherError):
    def __init__(self, url: str, why: str) -> None:
        super().__init__(
            f"cannot use Redis at {url}: {why}; start it (`tether dev`) or point "
            "TETHER_REDIS_URL at the right one (with its password)"
        )


def load_dev_env(path: Path = DEV_ENV) -> dict[str, str]:
    """Export what `tether dev` wrote into this process, under what the environment sets."""
    loaded: dict[str, str] = {}
    if not path.is_file():
        return loaded
    for line in path.read_text().splitlines():
        name, sep, value = line.removeprefix("export ").partition("=")
        if sep and name.strip() and not line.lstrip().startswith("#"):
            loaded[name.strip()] = value.strip().strip("'")
    for name, value in loaded.items():
        os.environ.setdefault(name, value)
    return loaded


def write_dev_env(values: dict[str, str], path: Path = DEV_ENV) -> list[str]:
    """Write ``values`` as export lines to ``path``; returns the lines."""
    import shlex

    lines = [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return lines


def agent_modules_importable() -> None:
    """Let this process import agent modules as workers started here do: from this folder
    (the `tether` script's path does not hold it, `python -m` does)."""
    import sys

    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)


def redis_shown(url: str) -> str:
    """The URL without its password, for saying which Redis was read: redis-py also
    takes one as a query parameter (``?password=``), and a key file's (TLS) too."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is not None:
        credentials, _, host = parts.netloc.rpartition("@")
        user = credentials.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any("password" in name.lower() for name, _ in query):
        hidden = [(n, "***" if "password" in n.lower() else v) for n, v in query]
        parts = parts._replace(query=urlencode(hidden, safe="*"))
    return urlunsplit(parts)


_checked: Runtime | None = None
# What the process runtime's client retried with before ``runtime`` took it away.
_worker_retry: Any = None


def runtime() -> Runtime:
    """The process runtime with a Redis client that does not retry, checked with one PING.

    Raises RedisUnreachableError naming the Redis and the reason (refused, timed out,
    wrong password) instead of the worker client's minute of retries.
    """
    global _checked
    from tether.runtime import get_runtime

    rt = get_runtime()
    # Checked once per runtime: a process that swaps its runtime (tests, embedded use)
    # gets the one it now has, not the first one it checked.
    if rt is _checked:
        return rt
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = rt.store.client
    global _worker_retry
    _worker_retry = client.get_retry()
    client.set_retry(Retry(NoBackoff(), 0))
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise RedisUnreachableError(
            redis_shown(rt.settings.redis_url), f"refused ({exc})"
        ) from None
    except redis.ResponseError as exc:
        raise RedisUnreachableError(
            redis_shown(rt.settings.redis_url), f"refused ({exc})"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnreachableError(
            redis_shown(rt.settings.redis_url), f"unreachable ({exc})"
        ) from None
    _checked = rt
    return rt


def lasting_runtime() -> Runtime:
    """``runtime`` for a command that runs for minutes (tether eval): refused as fast where
    Redis cannot be used, then riding out a Redis restart or failover as a worker does,
    where a lost connection midway would end the whole command."""
    rt = runtime()
    if _worker_retry is not None:
        rt.store.client.set_retry(_worker_retry)
    return rt


def nothing_found(what: str) -> str:
    """The line a read command prints when it finds nothing: which Redis it read."""
    return f"no {what} in Redis at {redis_shown(runtime().settings.redis_url)}"
