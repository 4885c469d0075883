"""Shared rate limits: requests and tokens per window for a model endpoint, calls per
second for a tool, held in Redis so every worker of every process draws on one allowance.

Each limit is a GCRA (ratelimit.lua): a token bucket kept as one timestamp, read on
Redis's clock. A call is charged when it goes, at the moment it goes, so what reaches
the provider keeps the limit however late a worker gets to it. A caller the limit
holds back gets a slot in a queue (under an id of its own: a run's step, an action),
spaced by what the calls before it take, so callers that wait wake in turn instead of
together; asking again before the slot gets the same slot, so a redelivered message
waits once. A model call is charged its token bound (what the run's budget reserves)
and gives back what it did not use once it knows. A 429 with Retry-After pauses the
endpoint for every caller (``pause``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Self

import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator
from redis.cluster import RedisCluster

from tether.store import keys
from tether.store.scripts import Script

RATELIMIT = Script.load("tether.store", "ratelimit.lua")
# How long a slot is kept past its start: a step that waited for it runs well within.
GRANT_KEPT_MS = 600_000
# Where an OpenAI client names no base_url, it calls OpenAI's API.
OPENAI_API = "https://api.openai.com/v1"


class RateLimit(BaseModel):
    """What one endpoint and model may take per window, shared by every worker.

    ``burst``: the share of a window's allowance that may go at once. The provider's own
    bucket holds all of it; the rest is headroom for the network's jitter between the
    moment Tether charges a call and the moment the provider counts it: a share of
    ``1 - burst`` of the window absorbs that much jitter (the default, 6 s of a minute).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int | None = Field(default=None, gt=0, description="requests per window")
    tokens: int | None = Field(default=None, gt=0, description="tokens per window")
    window_s: float = Field(default=60.0, gt=0, description="the window, in seconds")
    burst: float = Field(default=0.9, gt=0, le=1.0)

    @model_validator(mode="after")
    def _limits_something(self) -> Self:
        if self.requests is None and self.tokens is None:
            raise ValueError(
                "a rate limit names neither requests nor tokens per window, so it would limit "
                "nothing: give it requests, tokens or both"
            )
        return self


@dataclass(frozen=True)
class Limiter:
    """One allowance that calls share: ``name`` labels it in logs and metrics."""

    name: str
    tag: str  # the hash tag of its keys: every key of one script shares its slot
    limit: RateLimit | None  # None: no limit of its own, only the endpoint's pauses

    def dimensions(self, tokens: int) -> list[tuple[str, float, float, float]]:
        """(limit, seconds per unit, burst in units, this call's units) of each limit."""
        if self.limit is None:
            return []
        lim = self.limit
        dims = []
        for part, allowance, cost in (
            ("requests", lim.requests, 1),
            ("tokens", lim.tokens, tokens),
        ):
            if allowance is not None:
                burst = max(1.0, allowance * lim.burst)
                dims.append((part, lim.window_s / allowance, burst, float(cost)))
        return dims


@dataclass(frozen=True)
class Slot:
    """When a call may go (epoch seconds, Redis's clock; ``now``: it goes, charged), and
    whether this ask was given a new slot to wait for rather than finding its own."""

    start: float
    now: float
    new: bool

    @property
    def wait_s(self) -> float:
        return max(0.0, self.start - self.now)


def endpoint_of(model: Any) -> str:
    """The endpoint a model client calls: its base_url; for a client in front of others
    (a fallback's first model, a wrapper's inner one), that of the first it calls."""
    while True:
        inner = getattr(model, "inner", None) or next(iter(getattr(model, "models", [])), None)
        if inner is None:
            break
        model = inner
    base = getattr(model, "base_url", None)
    if base:
        return str(base).rstrip("/")
    return OPENAI_API if getattr(model, "system", "") == "openai" else str(model.system)


def model_limiter(endpoint: str, model: str, limit: RateLimit | None) -> Limiter:
    return Limiter(f"model:{endpoint}|{model}", _tag(endpoint), limit)


def tool_limiter(tool: str, per_s: float) -> Limiter:
    """``per_s`` calls a second; a second's worth may start at once (at least one)."""
    calls = max(1, math.ceil(per_s))
    limit = RateLimit(requests=calls, window_s=calls / per_s, burst=1.0)
    return Limiter(f"tool:{tool}", _tag(f"tool:{tool}"), limit)


def _tag(text: str) -> str:
    # A brace would end the hash tag early and scatter one limit's keys across slots.
    return text.replace("{", "(").replace("}", ")")


class RateLimits:
    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.client = client

    def acquire(self, limiter: Limiter, grant_id: str, tokens: int = 0) -> Slot:
        """Whether the call ``grant_id`` may go now (charged if so) or its slot to try at."""
        dims = limiter.dimensions(tokens)
        reply = RATELIMIT.run(
            self.client,
            keys=self._keys(limiter, grant_id, dims),
            args=["acquire", GRANT_KEPT_MS, *(v for d in dims for v in d[1:])],
        )
        return Slot(start=float(reply[0]), now=float(reply[2]), new=bool(int(reply[1])))

    def settle(self, limiter: Limiter, grant_id: str, tokens_unused: int = 0) -> None:
        """The call ``grant_id`` is over: its slot is dropped and the tokens it was charged
        beyond what it used go back to the limit."""
        dims = limiter.dimensions(0)
        back = (v for d in dims for v in (d[1], tokens_unused if d[0] == "tokens" else 0))
        RATELIMIT.run(self.client, keys=self._keys(limiter, grant_id, dims), args=["settle", *back])

    @staticmethod
    def _keys(
        limiter: Limiter, grant_id: str, dims: list[tuple[str, float, float, float]]
    ) -> list[str]:
        return [
            keys.ratelimit(limiter.tag, "pause"),
            keys.ratelimit(limiter.tag, f"grant:{limiter.name}:{grant_id}"),
            keys.ratelimit(limiter.tag, f"queue:{limiter.name}"),
            *(keys.ratelimit(limiter.tag, f"tat:{limiter.name}:{d[0]}") for d in dims),
        ]

    def pause(self, limiter: Limiter, seconds: float) -> Slot:
        """Hold every call to ``limiter``'s endpoint back ``seconds`` (a 429's Retry-After);
        the slot says until when it is held, the later of this pause and one held already."""
        reply = RATELIMIT.run(
            self.client,
            keys=[keys.ratelimit(limiter.tag, "pause")],
            args=["pause", repr(max(0.0, seconds))],
        )
        return Slot(start=float(reply[0]), now=float(reply[1]), new=True)
