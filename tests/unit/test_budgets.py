"""Budgets on a real Redis: atomic reservations, idempotent ids, settlement, wall time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from tether.store import keys
from tether.store.budgets import Budgets, Reservation, raised_limit
from tether.store.connection import connect
from tether.store.versioned import SideWrite
from tether.transport.wire import BudgetLimits


@pytest.fixture
def budgets(client: redis.Redis) -> Budgets:
    return Budgets(client)


def test_reserve_within_limits_is_granted(budgets: Budgets) -> None:
    budgets.open(
        "run_a", BudgetLimits(max_steps=3, max_tool_calls=5, max_tokens=1000, max_cost_usd=1.0)
    )
    first = budgets.reserve("run_a", "model:0", steps=1, tokens=400, cost_usd=0.25)
    assert first == Reservation(granted=True, reason="ok")
    second = budgets.reserve("run_a", "tools:0", tool_calls=5)
    assert second.granted
    usage = budgets.usage("run_a")
    assert (usage.steps, usage.tool_calls, usage.tokens) == (1, 5, 400)
    assert usage.cost_usd == pytest.approx(0.25)


def test_reserve_exactly_up_to_the_limit(budgets: Budgets) -> None:
    budgets.open("run_a", BudgetLimits(max_steps=2))
    assert budgets.reserve("run_a", "s0", steps=1).granted
    assert budgets.reserve("run_a", "s1", steps=1).granted
    refused = budgets.reserve("run_a", "s2", steps=1)
    assert not refused.granted
    assert refused.reason == "steps: 2 used + 1 requested exceeds max_steps=2"
    assert budgets.usage("run_a").steps == 2


@pytest.mark.parametrize(
    ("limits", "ask", "axis"),
    [
        (BudgetLimits(max_steps=1), {"steps": 2}, "max_steps=1"),
        (BudgetLimits(max_tool_calls=3), {"tool_calls": 4}, "max_tool_calls=3"),
        (BudgetLimits(max_tokens=100), {"tokens": 101}, "max_tokens=100"),
        (BudgetLimits(max_cost_usd=0.5), {"cost_usd": 0.75}, "max_cost_usd=0.5"),
    ],
)
def test_refusal_names_the_axis(
    budgets: Budgets, limits: BudgetLimits, ask: dict[str, float], axis: str
) -> None:
    budgets.open("run_b", limits)
    refused = budgets.reserve("run_b", "r1", **ask)  # type: ignore[arg-type]
    assert not refused.granted
    field = axis.split("=")[0].removeprefix("max_")
    assert refused.reason.startswith(f"{field}: 0 used + ")
    assert "exceeds " + axis in refused.reason
    assert refused.limit == field
    # A refused reservation charges nothing.
    usage = budgets.usage("run_b")
    assert (usage.steps, usage.tool_calls, usage.tokens, usage.cost_usd) == (0, 0, 0, 0.0)


def test_refused_reservation_charges_no_axis(budgets: Budgets) -> None:
    budgets.open("run_c", BudgetLimits(max_steps=10, max_tokens=50))
    refused = budgets.reserve("run_c", "model:0", steps=1, tokens=60)
    assert not refused.granted
    assert "max_tokens=50" in refused.reason
    assert budgets.usage("run_c").steps == 0  # steps passed its check but was not charged


def test_refused_id_may_be_retried_later(budgets: Budgets) -> None:
    budgets.open("run_d", BudgetLimits(max_tokens=100))
    assert budgets.reserve("run_d", "m0", tokens=80).granted
    assert not budgets.reserve("run_d", "m1", tokens=50).granted
    budgets.settle("run_d", "m0", tokens=-60, cost_usd=0.0)  # m0 really used 20
    again = budgets.reserve("run_d", "m1", tokens=50)
    assert again == Reservation(granted=True, reason="ok")
    assert budgets.usage("run_d").tokens == 70


def test_unbounded_axes_always_grant(budgets: Budgets) -> None:
    budgets.open("run_e", BudgetLimits())
    granted = budgets.reserve(
        "run_e", "big", steps=10_000, tool_calls=10_000, tokens=10**9, cost_usd=1e6
    )
    assert granted.granted
    assert budgets.usage("run_e").tokens == 10**9


def test_zero_tool_calls_limit_refuses_any_tool_call(budgets: Budgets) -> None:
    budgets.open("run_f", BudgetLimits(max_tool_calls=0))
    assert budgets.reserve("run_f", "model:0", steps=1).granted  # other axes unaffected
    refused = budgets.reserve("run_f", "tools:0", tool_calls=1)
    assert not refused.granted
    assert "max_tool_calls=0" in refused.reason


def test_same_reservation_id_charges_once(budgets: Budgets, client: redis.Redis) -> None:
    budgets.open("run_g", BudgetLimits(max_steps=5))
    assert budgets.reserve("run_g", "model:0", steps=1, tokens=10) == Reservation(
        granted=True, reason="ok"
    )
    again = budgets.reserve("run_g", "model:0", steps=1, tokens=10)
    assert again == Reservation(granted=True, reason="duplicate")
    usage = budgets.usage("run_g")
    assert (usage.steps, usage.tokens) == (1, 10)
    assert budgets.applied("run_g") == {"reserve:model:0"}
    # Kept in the budget hash: the reservations set holds only what a commit requires.
    assert client.hget(keys.budget("run_g"), "reserve:model:0") == "1"
    assert not client.exists(keys.reservations("run_g"))


def test_duplicate_is_granted_even_when_the_budget_is_now_spent(budgets: Budgets) -> None:
    # A redelivered message whose reservation already went through must not be refused.
    budgets.open("run_h", BudgetLimits(max_steps=1))
    assert budgets.reserve("run_h", "model:0", steps=1).granted
    assert not budgets.reserve("run_h", "model:1", steps=1).granted
    assert budgets.reserve("run_h", "model:0", steps=1).reason == "duplicate"
    assert budgets.usage("run_h").steps == 1


def test_settle_corrects_tokens_and_cost(budgets: Budgets) -> None:
    budgets.open("run_i", BudgetLimits(max_tokens=10_000, max_cost_usd=1.0))
    assert budgets.reserve("run_i", "model:0", steps=1, tokens=1000).granted
    budgets.settle("run_i", "model:0", tokens=-700, cost_usd=0.0125)
    usage = budgets.usage("run_i")
    assert usage.tokens == 300
    assert usage.cost_usd == pytest.approx(0.0125)
    assert usage.steps == 1  # settle never touches steps


def test_settle_accepts_negative_cost_and_tiny_floats(budgets: Budgets) -> None:
    budgets.open("run_j", BudgetLimits())
    budgets.reserve("run_j", "m0", cost_usd=0.5)
    budgets.settle("run_j", "m0", tokens=0, cost_usd=-0.2)
    budgets.reserve("run_j", "m1", cost_usd=0.0)
    budgets.settle("run_j", "m1", tokens=5, cost_usd=4.5e-07)
    usage = budgets.usage("run_j")
    assert usage.cost_usd == pytest.approx(0.3 + 4.5e-07)
    assert usage.tokens == 5


def test_settle_is_idempotent_per_id(budgets: Budgets, client: redis.Redis) -> None:
    budgets.open("run_k", BudgetLimits())
    budgets.reserve("run_k", "model:0", tokens=500)
    budgets.settle("run_k", "model:0", tokens=-100, cost_usd=0.01)
    budgets.settle("run_k", "model:0", tokens=-100, cost_usd=0.01)
    budgets.settle("run_k", "model:0", tokens=-999, cost_usd=5.0)
    usage = budgets.usage("run_k")
    assert usage.tokens == 400
    assert usage.cost_usd == pytest.approx(0.01)
    assert budgets.applied("run_k") == {"reserve:model:0", "settle:model:0"}


def test_settle_records_real_spend_even_over_the_limit(budgets: Budgets) -> None:
    budgets.open("run_l", BudgetLimits(max_tokens=100))
    assert budgets.reserve("run_l", "m0", tokens=50).granted
    budgets.settle("run_l", "m0", tokens=80, cost_usd=0.0)  # the model used 130
    assert budgets.usage("run_l").tokens == 130
    refused = budgets.reserve("run_l", "m1", tokens=1)
    assert not refused.granted
    assert refused.reason == "tokens: 130 used + 1 requested exceeds max_tokens=100"


def test_wall_time_limit(budgets: Budgets, client: redis.Redis) -> None:
    budgets.open("run_old", BudgetLimits(max_wall_s=10), started_at=time.time() - 100)
    refused = budgets.reserve("run_old", "model:0", steps=1)
    assert not refused.granted
    assert refused.reason.startswith("wall time ")
    assert "is over max_wall_s=10" in refused.reason
    assert refused.limit == "wall_s"
    assert budgets.usage("run_old").wall_s >= 100
    assert budgets.usage("run_old").steps == 0
    # A reservation asking for nothing is still refused: it checks the clock.
    assert not budgets.reserve(
        "run_old",
        "exec:a",
    ).granted
    # So is the wall-time check alone, which leaves no marker behind.
    (checked,) = budgets._batch.run(lambda pipe: budgets.add_check(pipe, "run_old"))
    assert Budgets.reservation(checked).limit == "wall_s"
    budgets.open("run_ok", BudgetLimits(max_wall_s=10))
    (checked,) = budgets._batch.run(lambda pipe: budgets.add_check(pipe, "run_ok"))
    assert Budgets.reservation(checked).granted
    assert not client.exists(keys.reservations("run_ok"))
    assert budgets.applied("run_ok") == set()

    budgets.open("run_new", BudgetLimits(max_wall_s=10), started_at=time.time() - 1)
    assert budgets.reserve("run_new", "model:0", steps=1).granted


def test_open_is_idempotent_and_keeps_the_first_clock_and_limits(budgets: Budgets) -> None:
    started = time.time() - 50
    budgets.open("run_m", BudgetLimits(max_steps=1, max_wall_s=1000), started_at=started)
    budgets.open("run_m", BudgetLimits(max_steps=99, max_wall_s=1))  # redelivered start
    assert budgets.reserve("run_m", "s0", steps=1).granted
    refused = budgets.reserve("run_m", "s1", steps=1)
    assert "max_steps=1" in refused.reason
    assert budgets.usage("run_m").wall_s >= 50


def test_usage_of_an_unknown_run_is_zero(budgets: Budgets) -> None:
    usage = budgets.usage("nope")
    assert (usage.steps, usage.tool_calls, usage.tokens, usage.cost_usd) == (0, 0, 0, 0.0)


def test_runs_have_separate_budgets(budgets: Budgets) -> None:
    budgets.open("run_x", BudgetLimits(max_steps=1))
    budgets.open("run_y", BudgetLimits(max_steps=1))
    assert budgets.reserve("run_x", "model:0", steps=1).granted
    assert budgets.reserve("run_y", "model:0", steps=1).reason == "ok"


# concurrency ------------------------------------------------------------------------

THREADS = 32
PER_THREAD = 20


def _hammer(
    redis_url: str, reserve: Callable[[Budgets, int, int], Reservation]
) -> list[Reservation]:
    """THREADS threads, each with its own connection, PER_THREAD reservations each."""
    results: list[Reservation] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(thread_no: int) -> None:
        try:
            mine = Budgets(connect(redis_url))
            barrier.wait()
            got = [reserve(mine, thread_no, i) for i in range(PER_THREAD)]
            with lock:
                results.extend(got)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(results) == THREADS * PER_THREAD
    return results


def test_concurrent_steps_never_exceed_the_limit(budgets: Budgets, redis_url: str) -> None:
    budgets.open("run_c", BudgetLimits(max_steps=100))
    results = _hammer(redis_url, lambda b, t, i: b.reserve("run_c", f"t{t}:{i}", steps=1))
    granted = [r for r in results if r.granted]
    assert len(granted) == 100
    assert all(r.reason == "ok" for r in granted)
    assert all("max_steps=100" in r.reason for r in results if not r.granted)
    assert budgets.usage("run_c").steps == 100


def test_concurrent_tool_calls_never_exceed_the_limit(budgets: Budgets, redis_url: str) -> None:
    budgets.open("run_t", BudgetLimits(max_tool_calls=150))
    # Batches of 3 calls: 150 / 3 = 50 batches fit exactly.
    results = _hammer(redis_url, lambda b, t, i: b.reserve("run_t", f"t{t}:{i}", tool_calls=3))
    assert sum(r.granted for r in results) == 50
    assert budgets.usage("run_t").tool_calls == 150


def test_concurrent_tokens_never_exceed_the_limit(budgets: Budgets, redis_url: str) -> None:
    budgets.open("run_k", BudgetLimits(max_tokens=1000))
    results = _hammer(redis_url, lambda b, t, i: b.reserve("run_k", f"t{t}:{i}", tokens=10))
    assert sum(r.granted for r in results) == 100
    assert budgets.usage("run_k").tokens == 1000


def test_concurrent_mixed_axes_each_stay_within_their_limit(
    budgets: Budgets, redis_url: str
) -> None:
    budgets.open("run_mix", BudgetLimits(max_steps=100, max_tool_calls=60, max_tokens=10_000))

    def reserve(b: Budgets, t: int, i: int) -> Reservation:
        if (t + i) % 2:
            return b.reserve("run_mix", f"model:{t}:{i}", steps=1, tokens=50)
        return b.reserve("run_mix", f"tools:{t}:{i}", tool_calls=1)

    results = _hammer(redis_url, reserve)
    usage = budgets.usage("run_mix")
    assert usage.steps == 100
    assert usage.tokens == 5000
    assert usage.tool_calls == 60
    assert sum(r.granted for r in results) == 160


def test_concurrent_redeliveries_of_the_same_ids_charge_once(
    budgets: Budgets, redis_url: str
) -> None:
    # Every thread reserves the same 20 ids, as 32 redeliveries of each message would.
    budgets.open("run_dup", BudgetLimits(max_steps=100))
    results = _hammer(redis_url, lambda b, t, i: b.reserve("run_dup", f"model:{i}", steps=1))
    assert all(r.granted for r in results)
    assert sum(r.reason == "ok" for r in results) == PER_THREAD
    assert sum(r.reason == "duplicate" for r in results) == (THREADS - 1) * PER_THREAD
    assert budgets.usage("run_dup").steps == PER_THREAD


# Extensions: budgets.lua only answers; the raise rides with the decision's commit --------


def _apply(client: redis.Redis, writes: list[SideWrite]) -> None:
    for w in writes:  # as the escalation record's commit would write them
        client.execute_command(w.command, w.key, *w.args)  # type: ignore[no-untyped-call]


def test_an_extension_is_answered_without_spending_and_written_once(
    budgets: Budgets, client: redis.Redis
) -> None:
    budgets.open("run_x", BudgetLimits(max_steps=2, max_cost_usd=1.0))
    got, writes = budgets.extension_writes(
        "run_x", "esc_x", limit="steps", by=2, ceiling=5, extender="carol|steps|2"
    )
    assert got.granted and got.reason == "ok"
    assert budgets.limit("run_x", "steps") == 2  # nothing spent until the commit writes it
    assert writes == [
        SideWrite(
            "HSET", keys.budget("run_x"), ("max_steps", "4", "extended:esc_x", "carol|steps|2")
        )
    ]
    _apply(client, writes)
    assert budgets.limit("run_x", "steps") == 4

    again, none = budgets.extension_writes(
        "run_x", "esc_x", limit="steps", by=2, ceiling=5, extender="carol|steps|2"
    )
    assert (again.granted, again.reason, none) == (True, "duplicate", [])
    other, none = budgets.extension_writes(
        "run_x", "esc_x", limit="steps", by=1, ceiling=5, extender="dan|steps|1"
    )
    assert not other.granted and "already extended" in other.reason and none == []

    past, none = budgets.extension_writes(
        "run_x", "esc_y", limit="steps", by=2, ceiling=5, extender="carol|steps|2"
    )
    assert not past.granted and "ceiling" in past.reason and none == []

    cost, writes = budgets.extension_writes(
        "run_x", "esc_z", limit="cost_usd", by=0.5, ceiling=2.0, extender="carol|cost_usd|0.5"
    )
    assert cost.granted
    _apply(client, writes)
    assert budgets.limit("run_x", "cost_usd") == 1.5


def test_a_raised_limit_is_whole_for_counted_limits() -> None:
    assert raised_limit("steps", 2, 2) == 4 and isinstance(raised_limit("steps", 2, 2), int)
    assert raised_limit("tokens", 1000, 2.5) == 1002
    assert raised_limit("cost_usd", 1.0, 0.5) == 1.5
    assert raised_limit("wall_s", 300, 60) == 360.0
