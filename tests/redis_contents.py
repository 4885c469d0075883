"""Every value in a Redis as text: what a reader of it could find, for asserting that
a redacted or withheld value is stored nowhere."""

from __future__ import annotations

import json

from tether.runtime import Runtime


def everything_in_redis(rt: Runtime) -> str:
    """Every value of every key in ``rt``'s Redis, as text (streams' entries included)."""
    client = rt.store.client
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "hash":
            parts.append(json.dumps(client.hgetall(key)))
        elif kind == "list":
            parts.append(json.dumps(client.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(json.dumps(sorted(client.smembers(key))))
        elif kind == "zset":
            parts.append(json.dumps(client.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(json.dumps(client.xrange(key), default=str))
    return "\n".join(parts)
