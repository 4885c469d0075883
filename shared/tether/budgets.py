"""Per-run budgets, checked and reserved atomically in Redis (budgets.lua).

Every model call and tool call first reserves what it may spend; concurrent
workers serialise on the script, so together they cannot overspend. Model
calls reserve an estimate and settle to the real usage afterwards. Each
reservation has an id derived from the run, step and action, so a redelivered
message re-reserving is a no-op rather than a double charge.
"""

from __future__ import annotations

import time
from importlib.resources import files
from typing import cast

import redis
from pydantic import BaseModel

from tether import keys
from tether.messages import BudgetLimits

_SCRIPT = files("tether").joinpath("budgets.lua").read_text()


class BudgetUsage(BaseModel):
    steps: int = 0
    tool_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0


class Reservation(BaseModel):
    granted: bool
    reason: str


class Budgets:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)

    def open(self, run_id: str, limits: BudgetLimits, *, started_at: float | None = None) -> None:
        """Set a run's limits; idempotent, so a redelivered start keeps the first clock."""
        fields: dict[str, str] = {"started_at": repr(started_at or time.time())}
        for name, value in limits.model_dump().items():
            fields[name] = "" if value is None else repr(value)
        pipe = self._client.pipeline(transaction=True)
        for name, value in fields.items():
            pipe.hsetnx(keys.budget(run_id), name, value)
        pipe.execute()

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
        granted, reason = self._script(
            keys=[keys.budget(run_id), keys.reservations(run_id)],
            args=[
                op,
                reservation_id,
                steps,
                tool_calls,
                tokens,
                repr(float(cost_usd)),
                repr(time.time()),
            ],
        )
        return Reservation(granted=bool(granted), reason=str(reason))

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
        """Correct a reservation's estimate to what was really spent (deltas may be negative)."""
        self._run(
            "settle",
            run_id,
            reservation_id,
            steps=0,
            tool_calls=0,
            tokens=tokens,
            cost_usd=cost_usd,
        )

    def usage(self, run_id: str) -> BudgetUsage:
        raw = cast(dict[str, str], self._client.hgetall(keys.budget(run_id)))
        started = float(raw.get("started_at") or time.time())
        return BudgetUsage(
            steps=int(raw.get("steps", 0)),
            tool_calls=int(raw.get("tool_calls", 0)),
            tokens=int(raw.get("tokens", 0)),
            cost_usd=float(raw.get("cost_usd", 0.0)),
            wall_s=max(0.0, time.time() - started),
        )
