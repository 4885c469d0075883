"""Per-run budgets, checked and reserved atomically in Redis (budgets.lua).

Every model call and tool call first reserves what it may spend; concurrent
workers serialise on the script, so together they cannot overspend. Model
calls reserve an estimate and settle to the real usage afterwards. Each
reservation has an id derived from the run, step and action, so a redelivered
message re-reserving is a no-op rather than a double charge.

A reservation's or settlement's id is applied once: budgets.lua keeps a marker per id
in the budget hash itself, read and written by the calls it makes anyway. A step's
tool-call reservation carries the settlement of its model call (``settling_in_reservation``):
one script call where there were two.

Human time is not agent time (invariant 8): the wall clock stops while a run
waits for a human and goes on when it stops waiting (``human_clock``, written
by the run's own commits), and a human's budget extension is written with the
escalation record's commit or not at all (``extension_writes``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from pydantic import BaseModel
from redis.client import Pipeline

from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.scripts import Script
from tether.store.state import RunState
from tether.store.versioned import SideWrite
from tether.transport.wire import BudgetLimits

BUDGETS = Script.load("tether.store", "budgets.lua")
# Opens a budget once: a redelivered start changes nothing (one HSETNX, one HSET).
BUDGETS_OPEN = Script.load("tether.store", "budgets_open.lua")


class BudgetUsage(BaseModel):
    steps: int = 0
    tool_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0


class Reservation(BaseModel):
    granted: bool
    reason: str
    # A refusal's limit, as budgets.lua names it: steps, tool_calls, tokens, cost_usd or
    # wall_s; None when granted, or when no budget is open (the run is unknown or expired).
    limit: str | None = None


@dataclass
class GuardedReservation:
    """A reservation sent in a commit's round trip, made only if that commit wins.

    RunStore.update sends it after the commit's script, guarded by the commit's
    token (budgets.lua): a commit that loses spends nothing. ``outcome`` is filled
    in once the commit won; None: not made (the commit lost, or another came after it).
    """

    reservation_id: str
    steps: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    outcome: Reservation | None = None


@dataclass(frozen=True)
class _Settlement:
    """A settlement held back for the next round trip (Budgets.settle)."""

    reservation_id: str
    tokens: int
    cost_usd: float


class Budgets:
    def __init__(self, client: redis.Redis, batch: WriteBatch | None = None) -> None:
        self._client = client
        self._batch = batch or WriteBatch(client)
        # Per thread (and greenlet), as the batch's held writes: the settlement that the
        # task's next add_reserve carries (settling_in_reservation).
        self._local = threading.local()

    def open(self, run_id: str, limits: BudgetLimits, *, started_at: float | None = None) -> None:
        """Set a run's limits; idempotent, so a redelivered start keeps the first clock."""
        self._batch.run(lambda pipe: self.add_open(pipe, run_id, limits, started_at=started_at))

    def add_open(
        self,
        pipe: Pipeline,
        run_id: str,
        limits: BudgetLimits,
        *,
        started_at: float | None = None,
        spent: BudgetUsage | None = None,
    ) -> None:
        """Queue ``open`` on a pipeline, to go out with other commands in one round trip.

        ``spent``: tokens and cost spent for the run before it existed (a thread's summary).
        """
        # markers=hash: budgets.lua keeps this budget's markers in the hash (a budget
        # opened before they moved there keeps them in the reservations set).
        # budgets_open.lua opens the budget only where its clock (started_at) is not set.
        opened_at = repr(started_at or time.time())
        fields: list[str] = ["markers", "hash"]
        for name, value in limits.model_dump().items():
            fields += [name, "" if value is None else repr(value)]
        if spent is not None:
            fields += ["tokens", str(spent.tokens), "cost_usd", repr(float(spent.cost_usd))]
        BUDGETS_OPEN.add(pipe, 1, keys.budget(run_id), opened_at, *fields)

    def _run(
        self,
        op: str,
        run_id: str,
        reservation_id: str,
        *,
        steps: int,
        tool_calls: int,
        tokens: int,
        cost_usd: float,
    ) -> Reservation:
        args = self._args(op, run_id, reservation_id, steps, tool_calls, tokens, cost_usd)
        (reply,) = self._batch.run(lambda pipe: BUDGETS.add(pipe, 2, *args))
        return self.reservation(reply)

    def add_reserve(
        self, pipe: Pipeline, run_id: str, reservation_id: str, *, tool_calls: int = 0
    ) -> None:
        """Queue ``reserve`` on a pipeline, for a commit that requires its granted marker
        (``granted_marker``); hand its reply to ``reservation``.

        Within ``settling_in_reservation`` for the run, the settlement held back there
        goes out in the same script call, applied first whatever the reservation's outcome.
        """
        args = self._args("reserve", run_id, reservation_id, 0, tool_calls, 0, 0.0, for_commit=True)
        carried: tuple[str, _Settlement] | None = getattr(self._local, "carried", None)
        if carried is not None and carried[0] == run_id:
            self._local.carried = None
            settled = carried[1]
            args += [settled.reservation_id, settled.tokens, repr(float(settled.cost_usd))]
        BUDGETS.add(pipe, 2, *args)

    @contextmanager
    def settling_in_reservation(self, run_id: str) -> Iterator[None]:
        """Within it, the settlement of the run that the task holds back (``settle``) goes
        out inside the run's next ``add_reserve``: one script call, not two.

        Where no add_reserve for the run is queued before it ends (a commit declined or
        raised first), the settlement is held back again, to go out with the next round
        trip as any settlement does; where none is held back, nothing changes.
        """
        budget = keys.budget(run_id)

        def held_settle(command: str, args: tuple[Any, ...]) -> bool:
            # As settle defers it: (sha, numkeys, budget, reservations, 'settle', ...).
            return (
                command == "evalsha"
                and args[0] == BUDGETS.sha
                and args[2:5]
                == (
                    budget,
                    keys.reservations(run_id),
                    "settle",
                )
            )

        withdrawn = self._batch.withdraw(held_settle)
        if withdrawn is None:
            yield
            return
        settlement = _Settlement(str(withdrawn[5]), int(withdrawn[8]), float(withdrawn[9]))
        self._local.carried = (run_id, settlement)
        try:
            yield
        finally:
            carried = getattr(self._local, "carried", None)
            self._local.carried = None
            if carried is not None:
                self._defer_settle(run_id, carried[1])

    def add_guarded(
        self, pipe: Pipeline, run_id: str, ahead: GuardedReservation, token: str
    ) -> None:
        """Queue ``ahead``, made only if the run's hash holds commit ``token``; hand its
        reply to ``guarded``."""
        args = self._args(
            "reserve",
            run_id,
            ahead.reservation_id,
            ahead.steps,
            0,
            ahead.tokens,
            ahead.cost_usd,
            token=token,
        )
        BUDGETS.add(pipe, 3, *args[:2], keys.run(run_id), *args[2:])

    @staticmethod
    def guarded(reply: Any) -> Reservation | None:
        """A guarded reservation's reply; None when it was skipped (see GuardedReservation)."""
        return None if int(reply[0]) < 0 else Budgets.reservation(reply)

    def add_check(self, pipe: Pipeline, run_id: str) -> None:
        """Queue a check of the run's wall time alone; hand its reply to ``reservation``."""
        BUDGETS.add(pipe, 2, *self._args("check", run_id, "", 0, 0, 0, 0.0))

    @staticmethod
    def granted_marker(reservation_id: str) -> str:
        """What budgets.lua leaves in the run's reservations set once it grants one that a
        commit requires (``add_reserve``); every granted one leaves it in the budget hash."""
        return f"reserve:{reservation_id}"

    def applied(self, run_id: str) -> set[str]:
        """The markers of the reservations ('reserve:<id>') and settlements ('settle:<id>')
        applied to the run, wherever budgets.lua keeps them."""

        def build(pipe: Pipeline) -> None:
            pipe.hkeys(keys.budget(run_id))
            pipe.smembers(keys.reservations(run_id))

        fields, members = self._batch.run(build)
        marked = {str(f) for f in fields if str(f).startswith(("reserve:", "settle:"))}
        return marked | {str(m) for m in members}

    @staticmethod
    def reservation(reply: Any) -> Reservation:
        granted, reason, *rest = reply
        limit = str(rest[0]) if rest and rest[0] else None
        return Reservation(granted=bool(granted), reason=str(reason), limit=limit)

    @staticmethod
    def _args(
        op: str,
        run_id: str,
        reservation_id: str,
        steps: int,
        tool_calls: int,
        tokens: int,
        cost_usd: float,
        *,
        token: str = "",
        for_commit: bool = False,
    ) -> list[Any]:
        return [
            keys.budget(run_id),
            keys.reservations(run_id),
            op,
            reservation_id,
            steps,
            tool_calls,
            tokens,
            repr(float(cost_usd)),
            repr(time.time()),
            token,
            "1" if for_commit else "",
        ]

    def reserve(
        self,
        run_id: str,
        reservation_id: str,
        *,
        steps: int = 0,
        tool_calls: int = 0,
        tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> Reservation:
        return self._run(
            "reserve",
            run_id,
            reservation_id,
            steps=steps,
            tool_calls=tool_calls,
            tokens=tokens,
            cost_usd=cost_usd,
        )

    def settle(self, run_id: str, reservation_id: str, *, tokens: int, cost_usd: float) -> None:
        """Correct a reservation's estimate to what was really spent (deltas may be negative).

        Inside a task the correction rides along with the next round trip (it
        needs no reply), and always before the next reservation, or inside it
        (``settling_in_reservation``).
        """
        if self._defer_settle(run_id, _Settlement(reservation_id, tokens, cost_usd)):
            return
        self._run(
            "settle",
            run_id,
            reservation_id,
            steps=0,
            tool_calls=0,
            tokens=tokens,
            cost_usd=cost_usd,
        )

    def _defer_settle(self, run_id: str, settlement: _Settlement) -> bool:
        """Hold ``settlement`` back for the next round trip; False when not holding back."""
        args = self._args(
            "settle",
            run_id,
            settlement.reservation_id,
            0,
            0,
            settlement.tokens,
            settlement.cost_usd,
        )
        return self._batch.defer("evalsha", BUDGETS.sha, 2, *args)

    def extension_writes(
        self,
        run_id: str,
        escalation_id: str,
        *,
        limit: str,
        by: float,
        ceiling: float | None,
        extender: str,
    ) -> tuple[Reservation, list[SideWrite]]:
        """An extension as writes for the escalation record's commit, and whether it may go.

        budgets.lua answers whether it may go (within the ceiling, one extension per
        escalation: the same ``extender`` again gets 'duplicate'), spending nothing; the
        raise is then written by the record's compare-and-set,
        so a decision that loses its commit raises nothing. Nothing else moves a
        run's limit while it waits on this escalation (one budget wait at a time),
        so the value read here is the value the commit raises.
        """
        args = [
            keys.budget(run_id),
            keys.reservations(run_id),
            "extend",
            escalation_id,
            limit,
            repr(float(by)) if limit == "cost_usd" or not float(by).is_integer() else int(by),
            "" if ceiling is None else repr(ceiling),
            extender,
        ]
        field = f"max_{limit}"

        def build(pipe: Pipeline) -> None:
            BUDGETS.add(pipe, 2, *args)
            pipe.hget(keys.budget(run_id), field)

        reply, current = self._batch.run(build)
        verdict = self.reservation(reply)
        if not verdict.granted or verdict.reason == "duplicate" or current in (None, ""):
            return verdict, []
        value = str(raised_limit(limit, float(current), by))
        writes = [
            SideWrite(
                "HSET", keys.budget(run_id), (field, value, f"extended:{escalation_id}", extender)
            )
        ]
        return verdict, writes

    def limit(self, run_id: str, limit: str) -> float | None:
        """The current maximum of one limit (after any extensions); None: unbounded."""
        (value,) = self._batch.run(lambda pipe: pipe.hget(keys.budget(run_id), f"max_{limit}"))
        return float(value) if value not in (None, "", b"") else None

    def usage(self, run_id: str) -> BudgetUsage:
        (found,) = self._batch.run(lambda pipe: pipe.hgetall(keys.budget(run_id)))
        raw = cast(dict[str, str], found)
        started = float(raw.get("started_at") or time.time())
        # As budgets.lua counts it: time spent waiting for humans is left out.
        until = float(raw.get("paused_at") or time.time())
        waited = int(raw.get("waited_ms") or 0) / 1000
        return BudgetUsage(
            steps=int(raw.get("steps", 0)),
            tool_calls=int(raw.get("tool_calls", 0)),
            tokens=int(raw.get("tokens", 0)),
            cost_usd=float(raw.get("cost_usd", 0.0)),
            wall_s=max(0.0, until - started - waited),
        )


def raised_limit(limit: str, current: float, by: float) -> int | float:
    """``current`` raised by ``by``, as BudgetLimits holds it: the counted limits (steps,
    tool_calls, tokens) whole. The one place a raise is computed: the budget hash
    (Budgets.extension_writes) and the run's state (tether.planner.decisions) must agree.
    """
    raised = float(current) + float(by)
    return int(raised) if limit in ("steps", "tool_calls", "tokens") else raised


def human_clock(
    before: RunState, after: RunState, now: float | None = None
) -> tuple[RunState, list[SideWrite]]:
    """Stop a run's wall clock in the commit that makes it wait for a human, and start it
    again, crediting the wait, in the commit that ends the wait (invariant 8).

    Returns ``after`` with its waiting_since and human_wait_s brought up to date, and
    the budget writes that go in with the same commit: a commit that loses stops or
    credits nothing, and only one commit can end a wait. budgets.lua reads paused_at
    (the clock stands still from then) and waited_ms (never counted).
    """
    waited, waits = bool(before.awaiting_human), bool(after.awaiting_human)
    if waited == waits:
        return after, []
    now = time.time() if now is None else now
    budget = keys.budget(after.run_id)
    if waits:
        at = datetime.fromtimestamp(now, UTC)
        paused = after.model_copy(update={"waiting_since": at})
        return paused, [SideWrite("HSET", budget, ("paused_at", repr(now)))]
    since = before.waiting_since
    span = max(0.0, now - since.timestamp()) if since is not None else 0.0
    resumed = after.model_copy(
        update={"waiting_since": None, "human_wait_s": before.human_wait_s + span}
    )
    writes = [SideWrite("HDEL", budget, ("paused_at",))]
    if span:
        writes.append(SideWrite("HINCRBY", budget, ("waited_ms", round(span * 1000))))
    return resumed, writes
