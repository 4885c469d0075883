"""A planning step's model call under the shared rate limits, and the publishing of the
messages that waited for one.

Before its model call a step asks its model's limit (tether.store.ratelimits:
TETHER_MODEL_RATE_LIMITS, else the agent's model_rate_limit, and the endpoint's 429
pause) whether the call may go now, which charges it. If not, the step ends without a
model call and without holding a worker while it waits: it goes into the deferred set,
due at its turn in the limit's queue, and is published again then; a redelivery before
its turn finds the same turn, so the wait is recorded and counted once. A 429 that says
when to come back pauses the endpoint for every planner, and the step waits out the
pause the same way.

``Publisher``, a thread of each planner process, publishes the deferred messages when
due through the outbox (``send_deferred``): only where the committed state still waits
for them, so publishing one again is harmless (invariant 4).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tether.agent.definition import Agent
from tether.errors import ModelError
from tether.models.openai import HAND_BACK_429
from tether.observability.logs import log
from tether.planner.outbox import send_deferred
from tether.runtime import Runtime
from tether.store import deferred, keys, ratelimits
from tether.store.ratelimit_waits import defer_to_slot
from tether.store.ratelimits import Limiter, RateLimits, Slot
from tether.store.state import RunState

# The longest the publisher sleeps: how late a message another process deferred may go out.
POLL_S = 0.1


def model_limiter(rt: Runtime, agent: Agent) -> Limiter | None:
    """The limit the agent's model calls share; None where there is none to keep: no limit
    configured and an endpoint that is no HTTP one (no 429 to pause on)."""
    endpoint = ratelimits.endpoint_of(agent.model)
    name = agent.model.name
    configured = rt.settings.model_rate_limits
    limit = configured.get(f"{endpoint}|{name}") or configured.get(name) or agent.model_rate_limit
    if limit is None and not endpoint.startswith(("http://", "https://")):
        return None
    return ratelimits.model_limiter(endpoint, name, limit)


def admit_model_call(rt: Runtime, agent: Agent, state: RunState, tokens: int) -> bool:
    """Whether the step's model call may start now, ``tokens`` its bound (the budget's
    reservation); False: the step was deferred to its slot."""
    limiter = model_limiter(rt, agent)
    if limiter is None:
        return True
    slot = RateLimits(rt.store.client).acquire(limiter, _grant(state), tokens)
    if slot.wait_s <= 0:
        return True
    _defer(rt, state, limiter.name, slot, "rate limit")
    return False


def settle_model_call(rt: Runtime, agent: Agent, state: RunState, reserved: int, used: int) -> None:
    """The step's model call answered: its slot is spent, the tokens it did not use go back."""
    limiter = model_limiter(rt, agent)
    if limiter is not None and limiter.limit is not None:
        RateLimits(rt.store.client).settle(limiter, _grant(state), max(0, reserved - used))


@contextmanager
def handing_back_429() -> Iterator[None]:
    """Model calls inside hand a 429 with Retry-After back at once (see ``pause_on_429``)."""
    token = HAND_BACK_429.set(True)
    try:
        yield
    finally:
        HAND_BACK_429.reset(token)


def pause_on_429(rt: Runtime, agent: Agent, state: RunState, exc: ModelError) -> bool:
    """Where the call failed on a 429 with Retry-After: pause the endpoint for every
    planner and defer the step past the pause; True if so (the run goes on). A step
    waits out at most TETHER_MODEL_MAX_RATE_LIMIT_PAUSES of them."""
    if exc.retry_after_s is None:
        return False
    paused = rt.store.client.hincrby(keys.budget(state.run_id), f"paused_429:{state.step}", 1)
    if paused > rt.settings.model_max_rate_limit_pauses:
        return False  # the endpoint kept refusing: the step fails as any exhausted retry does
    limiter = model_limiter(rt, agent) or ratelimits.model_limiter(
        ratelimits.endpoint_of(agent.model), agent.model.name, None
    )
    limits = RateLimits(rt.store.client)
    limits.settle(limiter, _grant(state))  # its slot was used; it takes a new one
    held = limits.pause(limiter, exc.retry_after_s)
    # Steps held by one pause would all call at its end: spread over one more Retry-After.
    due = held.start + random.uniform(0.0, exc.retry_after_s)
    _defer(rt, state, limiter.name, Slot(start=due, now=held.now, new=True), "429 Retry-After")
    return True


def _grant(state: RunState) -> str:
    return f"{state.run_id}:{state.step}"


def _defer(rt: Runtime, state: RunState, limit: str, slot: Slot, why: str) -> None:
    entry = deferred.step_entry(state.run_id, state.step)
    defer_to_slot(rt.store, entry, state.run_id, state.step, limit, slot, why)


def publish_due(rt: Runtime, now: float) -> list[str]:
    """Publish the deferred messages due at ``now`` (Redis's clock); returns what was sent."""
    sent: list[str] = []
    client = rt.store.client
    for entry in deferred.take_due(client, now):
        try:
            run_id, kind, what = deferred.parse_entry(entry)
        except ValueError:
            # Written by no deferral (forged, or by another version): it names nothing to
            # send, and must not stop the entries taken with it (invariant 7).
            log.warning("deferred_entry_unreadable", entry=entry)
            deferred.sent(client, entry, now)
            continue
        try:
            published = send_deferred(rt, rt.store.get(run_id), kind, what)
        except Exception:
            # Taken off the set but not sent: back in a second, rather than left to the
            # reconciler's stall threshold.
            log.exception("deferred_publish_failed", entry=entry)
            deferred.defer(client, entry, now + 1.0)
            continue
        deferred.sent(client, entry, now)
        if published is not None:
            sent.append(published)
    return sent


class Publisher:
    """A planner process's thread that publishes deferred messages as they come due."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="tether-deferred")

    def start(self) -> Publisher:
        self.thread.start()
        return self

    def _loop(self) -> None:
        client = self.rt.store.client
        while not self.stop.is_set():
            pause = POLL_S
            try:
                now, first = deferred.peek(client)
                if first is not None and first <= now:
                    publish_due(self.rt, now)
                    pause = 0.0
                elif first is not None:
                    pause = min(POLL_S, first - now)
            except Exception as exc:  # Redis away: try again shortly
                log.warning("deferred_publish_failed", error=f"{type(exc).__name__}: {exc}")
                pause = 1.0
            self.stop.wait(pause)
