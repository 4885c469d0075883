"""The run store and versioned documents on a real Redis."""

from __future__ import annotations

import json
import threading

import pytest
import redis

from tether.errors import BudgetExhaustedError, StaleStateError, UnknownRunError
from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.budgets import Budgets, GuardedReservation
from tether.store.connection import connect
from tether.store.known import KnownStates
from tether.store.runs import RunStore, run_id_for
from tether.store.state import ChatMessage, RunState, RunStatus
from tether.store.versioned import VERSIONED, HeldValueDiffersError, VersionedDocs
from tether.transport.wire import BudgetLimits, EventKind, Observation, RunEvent, TaskEvent


@pytest.fixture
def store(client: redis.Redis) -> RunStore:
    return RunStore(client, run_ttl_s=3600)


def _event(event_id: str = "evt-1", text: str = "add 2 and 3") -> TaskEvent:
    return TaskEvent(event_id=event_id, agent="calculator", input=text)


def _rival(store: RunStore, run_id: str, **fields: object) -> RunState | None:
    """Another process commits the run (with ``fields`` changed) in between."""
    other = RunStore(store.client, run_ttl_s=3600)
    return other.update(run_id, lambda s: s.model_copy(update=fields))


def _state(event: TaskEvent, **overrides: object) -> RunState:
    fields: dict[str, object] = {
        "run_id": run_id_for(event.event_id),
        "event_id": event.event_id,
        "agent": event.agent,
        "goal": event.input,
        "limits": BudgetLimits(max_steps=5),
        "messages": [ChatMessage(role="user", content=event.input)],
    }
    fields.update(overrides)
    return RunState.model_validate(fields)


# run ids ---------------------------------------------------------------------------


def test_run_id_for_is_deterministic_and_distinct() -> None:
    assert run_id_for("evt-1") == run_id_for("evt-1")
    assert run_id_for("evt-1") != run_id_for("evt-2")
    run_id = run_id_for("evt-1")
    assert run_id.startswith("run_")
    assert len(run_id) == len("run_") + 20
    int(run_id.removeprefix("run_"), 16)  # hex


def test_run_id_for_is_stable_across_releases() -> None:
    # Run ids are persisted: changing the namespace would orphan every stored run.
    assert run_id_for("evt-1") == "run_696b59ede6f8534bbf0a"
    assert run_id_for("order-42") == "run_830c1d8eb48158ed994d"
    assert run_id_for("") != run_id_for(" ")


# create / load / update ---------------------------------------------------------------


def test_create_then_create_again_keeps_the_first_state(store: RunStore) -> None:
    event = _event()
    first, created = store.create(event, _state(event, goal="first goal"))
    assert created is True
    assert first.version == 1

    second, created_again = store.create(
        event, _state(event, goal="second goal", limits=BudgetLimits(max_steps=99))
    )
    assert created_again is False
    assert second.goal == "first goal"
    assert second.limits == BudgetLimits(max_steps=5)
    assert second.version == 1
    assert store.load(first.run_id).goal == "first goal"
    assert [s.run_id for s in store.recent()] == [first.run_id]


def test_create_opens_the_budget_with_the_runs_limits(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event, limits=BudgetLimits(max_steps=1)))
    assert store.budgets.reserve(state.run_id, "model:0", steps=1).granted
    assert "max_steps=1" in store.budgets.reserve(state.run_id, "model:1", steps=1).reason


def test_get_and_load(store: RunStore) -> None:
    assert store.get("run_missing") is None
    with pytest.raises(UnknownRunError, match="run 'run_missing' does not exist"):
        store.load("run_missing")
    event = _event()
    created, _ = store.create(event, _state(event))
    loaded = store.load(created.run_id)
    assert loaded.version == 1
    assert loaded.messages == [ChatMessage(role="user", content="add 2 and 3")]
    assert loaded.model_dump(exclude={"version"}) == created.model_dump(exclude={"version"})


def test_update_bumps_the_version(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    committed = store.update(
        state.run_id, lambda s: s.model_copy(update={"step": 1, "status": RunStatus.running})
    )
    assert committed is not None and committed.version == 2
    assert committed.updated_at >= state.updated_at
    loaded = store.load(state.run_id)
    assert (loaded.version, loaded.step, loaded.status) == (2, 1, RunStatus.running)


def test_an_update_from_a_stale_state_decides_again_on_the_current_one(store: RunStore) -> None:
    event = _event()
    created, _ = store.create(event, _state(event))
    _rival(store, created.run_id, step=1)  # this store still remembers version 1
    seen: list[tuple[int, int]] = []

    def change(current: RunState) -> RunState:
        seen.append((current.version, current.step))
        return current.model_copy(update={"step": current.step + 6})

    updated = store.update(created.run_id, change)
    # Its commit over version 1 lost and wrote nothing; the change ran again on the winner.
    assert seen == [(1, 0), (2, 1)]
    assert updated is not None and (updated.step, updated.version) == (7, 3)
    loaded = RunStore(store.client).load(created.run_id)
    assert (loaded.step, loaded.version) == (7, 3)


def test_a_terminal_commit_sets_expiry(store: RunStore, client: redis.Redis) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    store.log.append(state.run_id, EventKind.run_started, 0)
    store.budgets.reserve(state.run_id, "model:0", steps=1)
    # A reservation a commit requires: its marker is in the reservations set too.
    store.batch.run(lambda pipe: store.budgets.add_reserve(pipe, state.run_id, "tools:0"))
    assert client.ttl(keys.run(state.run_id)) == -1  # live runs never expire
    store.update(state.run_id, lambda s: s.model_copy(update={"status": RunStatus.running}))
    assert client.ttl(keys.run(state.run_id)) == -1
    store.update(state.run_id, lambda s: s.model_copy(update={"status": RunStatus.succeeded}))
    for key in (
        keys.run(state.run_id),
        keys.run_log(state.run_id),
        keys.budget(state.run_id),
        keys.reservations(state.run_id),
    ):
        assert 0 < client.ttl(key) <= 3600, key


def test_update_applies_a_change(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    updated = store.update(state.run_id, lambda s: s.model_copy(update={"step": s.step + 1}))
    assert updated is not None
    assert (updated.step, updated.version) == (1, 2)


def test_update_returns_none_when_the_change_declines(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    assert store.update(state.run_id, lambda s: None) is None
    assert store.load(state.run_id).version == 1


def test_update_of_an_unknown_run_raises(store: RunStore) -> None:
    with pytest.raises(UnknownRunError):
        store.update("run_missing", lambda s: s)


def test_update_retries_on_a_conflict_and_keeps_both_changes(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    calls: list[int] = []

    def change(current: RunState) -> RunState:
        calls.append(current.version)
        if len(calls) == 1:
            # Another writer commits between our read and our commit.
            _rival(store, current.run_id, metadata={"other": True})
        return current.model_copy(update={"invalid_calls": current.invalid_calls + 1})

    updated = store.update(state.run_id, change)
    assert calls == [1, 2]  # retried once, on the newer version
    assert updated is not None
    assert updated.version == 3
    assert updated.invalid_calls == 1
    assert updated.metadata == {"other": True}  # the other writer's change survived


def test_update_logs_only_the_change_that_won(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    seen: list[int] = []

    def change(current: RunState) -> RunState:
        seen.append(current.version)
        if len(seen) == 1:
            _rival(store, current.run_id)  # a rival commits first: this try loses
        return current.model_copy(update={"step": current.step + 1})

    def describe(changed: RunState) -> list[RunEvent]:
        return [
            RunEvent(
                run_id=changed.run_id,
                kind=EventKind.decision,
                step=changed.step,
                data={"v": changed.version},
            )
        ]

    updated = store.update(state.run_id, change, log=describe)
    assert updated is not None and seen == [1, 2]
    stepped = [e for _, e in store.log.read(state.run_id) if e.kind == EventKind.decision]
    # One entry, written by the commit that won (read at version 2), none by the loser.
    assert [(e.step, e.data) for e in stepped] == [(1, {"v": 2})]
    lifecycle = [f for _, f in store.client.xrange(keys.LIFECYCLE_STREAM)]
    assert {"run_id": state.run_id, "kind": "decision", "step": "1"} in lifecycle


def test_update_commits_only_if_its_tool_calls_are_granted(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event, limits=BudgetLimits(max_tool_calls=1)))

    def step_on(s: RunState) -> RunState:
        return s.model_copy(update={"step": s.step + 1})

    def describe(s: RunState) -> list[RunEvent]:
        return [RunEvent(run_id=s.run_id, kind=EventKind.decision, step=s.step)]

    with pytest.raises(BudgetExhaustedError, match="max_tool_calls=1") as refused:
        store.update(state.run_id, step_on, log=describe, tool_calls=("tools:0", 2))
    assert refused.value.limit == "tool_calls"
    assert store.load(state.run_id).version == 1  # nothing written, not even the log
    assert [e.kind for _, e in store.log.read(state.run_id)] == []
    assert store.budgets.usage(state.run_id).tool_calls == 0

    first = store.update(state.run_id, step_on, log=describe, tool_calls=("tools:0", 1))
    assert first is not None and first.step == 1
    # A redelivered decision reserves under the same id: counted once, still allowed.
    again = store.update(state.run_id, step_on, tool_calls=("tools:0", 1))
    assert again is not None and again.step == 2
    assert store.budgets.usage(state.run_id).tool_calls == 1
    assert [e.kind for _, e in store.log.read(state.run_id)] == ["decision"]


def test_update_commits_only_while_its_held_keys_hold_exactly_their_strings(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event()
    state, _ = store.create(event, _state(event, limits=BudgetLimits(max_steps=3)))
    held = keys.action_result(f"{state.run_id}:0:0")
    other = keys.action_result(f"{state.run_id}:0:1")
    client.set(held, '{"ok": true}')
    client.set(other, "kept")

    def step_on(s: RunState) -> RunState:
        return s.model_copy(update={"step": s.step + 1})

    def describe(s: RunState) -> list[RunEvent]:
        return [RunEvent(run_id=s.run_id, kind=EventKind.decision, step=s.step)]

    ahead = GuardedReservation("model:1", steps=1, tokens=10)
    # Another string, or none at all: nothing written, not the log, not the reservation.
    for asked, found in (('{"ok": false}', '{"ok": true}'), ('{"ok": true} ', '{"ok": true}')):
        with pytest.raises(HeldValueDiffersError) as differs:
            store.update(
                state.run_id,
                step_on,
                log=describe,
                reserve_after=lambda _: ahead,
                holding=[(other, "kept"), (held, asked)],
            )
        assert (differs.value.key, differs.value.found) == (held, found)
    missing = keys.action_result(f"{state.run_id}:0:2")
    with pytest.raises(HeldValueDiffersError) as differs:
        store.update(state.run_id, step_on, log=describe, holding=[(missing, "anything")])
    assert (differs.value.key, differs.value.found) == (missing, None)
    assert store.load(state.run_id).version == 1
    assert [e.kind for _, e in store.log.read(state.run_id)] == []
    assert ahead.outcome is None and store.budgets.usage(state.run_id).steps == 0

    committed = store.update(
        state.run_id,
        step_on,
        log=describe,
        reserve_after=lambda _: ahead,
        holding=[(other, "kept"), (held, '{"ok": true}')],
    )
    assert committed is not None and committed.step == 1
    assert [e.kind for _, e in store.log.read(state.run_id)] == ["decision"]
    assert ahead.outcome is not None and ahead.outcome.granted


def test_a_held_key_is_checked_on_the_version_that_commits(
    store: RunStore, client: redis.Redis
) -> None:
    # The first try loses to a rival (its reply carries the winner) and the key changes
    # meanwhile: the try that commits checks the key as it is then.
    event = _event()
    state, _ = store.create(event, _state(event))
    held = keys.action_result(f"{state.run_id}:0:0")
    client.set(held, "first")
    tries: list[int] = []

    def change(current: RunState) -> RunState:
        if not tries:
            _rival(store, current.run_id)
            client.set(held, "second")
        tries.append(current.version)
        return current.model_copy(update={"step": current.step + 1})

    with pytest.raises(HeldValueDiffersError) as differs:
        store.update(state.run_id, change, holding=[(held, "first")])
    assert differs.value.found == "second" and tries == [1, 2]
    assert store.load(state.run_id).step == 0


def test_a_writer_that_may_only_read_a_held_key_commits_over_it(
    store: RunStore, client: redis.Redis, redis_url: str
) -> None:
    # As the planner over an action's result (users.acl: %R~tether:action:*): a key named
    # in a script's KEYS needs write rights, so a held key must not be one of them.
    event = _event()
    state, _ = store.create(event, _state(event))
    held = keys.action_result(f"{state.run_id}:0:0")
    client.set(held, "stored")
    user = "held_reader"
    client.acl_setuser(
        user,
        enabled=True,
        passwords=["+secret"],
        commands=["+@all"],
        keys=["tether:[^a]*"],
        reset_keys=True,
    )
    client.execute_command("ACL", "SETUSER", user, "%R~tether:action:*")
    try:
        reader = connect(redis_url.replace("redis://", f"redis://{user}:secret@"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.set(held, "forged")
        limited = RunStore(reader, run_ttl_s=3600)
        committed = limited.update(
            state.run_id, lambda s: s.model_copy(update={"step": 1}), holding=[(held, "stored")]
        )
        assert committed is not None and committed.step == 1
    finally:
        client.acl_deluser(user)


def test_holding_and_tool_calls_do_not_go_together(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event, limits=BudgetLimits(max_tool_calls=1)))
    with pytest.raises(ValueError, match="holding"):
        store.update(state.run_id, lambda s: s, holding=[("k", "v")], tool_calls=("t:0", 1))
    assert store.budgets.usage(state.run_id).tool_calls == 0


def test_a_commit_that_ran_before_its_reservation_commits_again(
    store: RunStore, client: redis.Redis
) -> None:
    # After a Redis restart: the reservation's script is missing (NOSCRIPT, sent again
    # later) while the commit's script is there, loaded by another client in between.
    event = _event()
    state, _ = store.create(event, _state(event, limits=BudgetLimits(max_tool_calls=1)))
    client.script_flush()
    client.script_load(VERSIONED.text)

    committed = store.update(
        state.run_id, lambda s: s.model_copy(update={"step": s.step + 1}), tool_calls=("t:0", 1)
    )
    assert committed is not None and committed.step == 1
    assert store.budgets.usage(state.run_id).tool_calls == 1


def test_a_reservation_after_a_commit_is_made_only_by_the_commit_that_won(
    store: RunStore,
) -> None:
    event = _event()
    state, _ = store.create(event, _state(event, limits=BudgetLimits(max_steps=3)))
    tries: list[GuardedReservation] = []

    def change(current: RunState) -> RunState:
        if not tries:
            _rival(store, current.run_id)  # a rival commits first: this try loses
        return current.model_copy(update={"step": current.step + 1})

    def reserve_after(changed: RunState) -> GuardedReservation:
        tries.append(GuardedReservation(f"model:{changed.step}", steps=1, tokens=40 + len(tries)))
        return tries[-1]

    updated = store.update(state.run_id, change, reserve_after=reserve_after)
    assert updated is not None and len(tries) == 2
    lost, won = tries
    assert lost.outcome is None  # its commit lost: nothing spent for it
    assert won.outcome is not None and won.outcome.granted
    usage = store.budgets.usage(state.run_id)
    assert (usage.steps, usage.tokens) == (1, 41)  # the winner's estimate, once

    # Refused by the budget: the commit still stands, and the outcome says why.
    refused = GuardedReservation("model:big", steps=5)
    again = store.update(
        state.run_id,
        lambda s: s.model_copy(update={"step": s.step + 1}),
        reserve_after=lambda _: refused,
    )
    assert again is not None and again.step == updated.step + 1
    assert refused.outcome is not None and not refused.outcome.granted
    assert refused.outcome.limit == "steps"
    assert store.budgets.usage(state.run_id).steps == 1


def test_a_guarded_reservation_is_skipped_once_another_commit_came_after_its_own(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    store.update(state.run_id, lambda s: s.model_copy(update={"step": 1}))
    token = client.hget(keys.run(state.run_id), "commit")
    assert token
    # A rival's commit lands between that commit and its reservation.
    _rival(store, state.run_id)
    late = GuardedReservation("model:1", steps=1, tokens=10)
    pipe = client.pipeline(transaction=False)
    store.budgets.add_guarded(pipe, state.run_id, late, str(token))
    assert Budgets.guarded(pipe.execute()[0]) is None
    assert store.budgets.usage(state.run_id).steps == 0
    pipe = client.pipeline(transaction=False)
    store.budgets.add_guarded(
        pipe, state.run_id, late, str(client.hget(keys.run(state.run_id), "commit"))
    )
    made = Budgets.guarded(pipe.execute()[0])
    assert made is not None and made.granted  # the latest commit's token still holds
    assert store.budgets.usage(state.run_id).steps == 1


def test_update_gives_up_after_its_attempts(store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    calls = 0

    def always_conflicts(current: RunState) -> RunState:
        nonlocal calls
        calls += 1
        _rival(store, current.run_id)
        return current

    with pytest.raises(StaleStateError, match="kept changing under 3 update attempts"):
        store.update(state.run_id, always_conflicts, attempts=3)
    assert calls == 3


def test_concurrent_updates_lose_no_increment(redis_url: str, store: RunStore) -> None:
    event = _event()
    state, _ = store.create(event, _state(event))
    threads, per_thread = 6, 15
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker() -> None:
        mine = RunStore(connect(redis_url))
        barrier.wait()
        try:
            for _ in range(per_thread):
                mine.update(
                    state.run_id,
                    lambda s: s.model_copy(update={"invalid_calls": s.invalid_calls + 1}),
                    attempts=1000,
                )
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    assert not errors
    final = store.load(state.run_id)
    assert final.invalid_calls == threads * per_thread
    assert final.version == 1 + threads * per_thread


def test_recent_is_newest_first(store: RunStore) -> None:
    from datetime import UTC, datetime, timedelta

    base = datetime(2024, 1, 1, tzinfo=UTC)
    ids = []
    for n in range(3):
        event = _event(f"evt-{n}")
        state, _ = store.create(event, _state(event, created_at=base + timedelta(minutes=n)))
        ids.append(state.run_id)
    assert [s.run_id for s in store.recent()] == list(reversed(ids))
    assert [s.run_id for s in store.recent(limit=2)] == [ids[2], ids[1]]


# versioned documents ---------------------------------------------------------------


def test_versioned_docs_compare_and_set(client: redis.Redis) -> None:
    docs = VersionedDocs(WriteBatch(client))
    assert docs.read("doc:1") is None
    assert docs.write("doc:1", "v1", 0) == 1
    with pytest.raises(StaleStateError):
        docs.write("doc:1", "again", 0)  # expected no document yet
    assert docs.write("doc:1", "v2", 1) == 2
    with pytest.raises(StaleStateError):
        docs.write("doc:1", "stale", 1)
    with pytest.raises(StaleStateError):
        docs.write("doc:1", "future", 5)
    assert docs.read("doc:1") == ("v2", 2)


# event log ---------------------------------------------------------------------


def test_log_and_trace_round_trip(store: RunStore, client: redis.Redis) -> None:
    first = store.log.append(
        "run_1", EventKind.run_started, 0, agent="calculator", limits={"max_steps": 3}
    )
    answer = {"content": None, "tool_calls": []}
    store.log.append("run_1", EventKind.model_call, 0, tokens=12, answer=answer)
    store.log.append("run_2", EventKind.run_started, 0)  # another run's log stays separate
    store.log.append("run_1", EventKind.run_finished, 1, status="succeeded")

    trace = store.log.read("run_1")
    assert [event.kind for _, event in trace] == ["run_started", "model_call", "run_finished"]
    entry_id, started = trace[0]
    assert started == first
    assert started.data == {"agent": "calculator", "limits": {"max_steps": 3}}
    assert trace[1][1].data["answer"] == {"content": None, "tool_calls": []}
    assert trace[2][1].step == 1
    assert all(event.run_id == "run_1" for _, event in trace)
    assert entry_id.count("-") == 1  # a stream id

    lifecycle = client.xrange(keys.LIFECYCLE_STREAM)
    assert [(f["run_id"], f["kind"]) for _, f in lifecycle] == [
        ("run_1", "run_started"),
        ("run_1", "model_call"),
        ("run_2", "run_started"),
        ("run_1", "run_finished"),
    ]


def test_trace_after_an_id_returns_only_later_entries(store: RunStore) -> None:
    for n in range(5):
        store.log.append("run_1", EventKind.observation, n)
    trace = store.log.read("run_1")
    ids = [entry_id for entry_id, _ in trace]
    later = store.log.read("run_1", after=ids[1])
    assert [e.step for _, e in later] == [2, 3, 4]
    assert [i for i, _ in later] == ids[2:]
    assert store.log.read("run_1", after=ids[-1]) == []
    assert store.log.read("run_missing") == []


# action results ------------------------------------------------------------------


def _observation(output: object, ok: bool = True) -> Observation:
    return Observation(
        action_id="run_1:0:0",
        run_id="run_1",
        step=0,
        tool="add",
        tool_call_id="call_1",
        ok=ok,
        output=output,
        error=None if ok else "boom",
    )


def test_save_result_keeps_the_first(store: RunStore, client: redis.Redis) -> None:
    assert store.results.get("run_1:0:0") is None
    first = _observation(5)
    assert store.results.save(first) == first
    second = store.results.save(_observation(999, ok=False))
    assert second == first
    assert store.results.get("run_1:0:0") == first
    assert 0 < client.ttl(keys.action_result("run_1:0:0")) <= 3600


def test_concurrent_save_result_agrees_on_one_winner(store: RunStore, redis_url: str) -> None:
    results: list[Observation] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        mine = RunStore(connect(redis_url))
        barrier.wait()
        got = mine.results.save(_observation(n))
        with lock:
            results.append(got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    assert len({r.output for r in results}) == 1
    assert store.results.get("run_1:0:0") == results[0]


# rejected input ------------------------------------------------------------------


def test_reject_and_rejected(store: RunStore) -> None:
    assert store.rejections.recent() == []
    store.rejections.record("malformed TaskEvent: event_id", {"event_id": "", "agent": "x"})
    store.rejections.record("not json", "<<garbage>>")
    entries = store.rejections.recent()
    assert [e["reason"] for e in entries] == ["not json", "malformed TaskEvent: event_id"]
    assert entries[0]["payload"] == "<<garbage>>"
    assert json.loads(entries[1]["payload"]) == {"event_id": "", "agent": "x"}
    assert all(e["id"] and e["at"] for e in entries)
    assert len(store.rejections.recent(count=1)) == 1


def test_reject_truncates_huge_payloads(store: RunStore) -> None:
    store.rejections.record("too big", {"input": "x" * 10_000})
    assert len(store.rejections.recent()[0]["payload"]) == 4096


# appended lists ---------------------------------------------------------------------


def _tool_turn(state: RunState, i: int) -> RunState:
    observation = Observation(
        action_id=f"{state.run_id}:{i}:0",
        run_id=state.run_id,
        step=i,
        tool="blob",
        tool_call_id=f"call_{i}",
        ok=True,
        output="x" * 4096,
    )
    return state.model_copy(
        update={
            "step": state.step + 1,
            "messages": [
                *state.messages,
                ChatMessage(role="tool", tool_call_id=f"call_{i}", content="x" * 4096),
            ],
            "completed_actions": [*state.completed_actions, observation],
        }
    )


def test_a_commit_appends_messages_and_keeps_the_document_small(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event("evt-lists")
    state, _ = store.create(event, _state(event))
    sizes = []
    for i in range(20):
        state = store.update(state.run_id, lambda s, i=i: _tool_turn(s, i)) or state
        sizes.append(len(client.hget(keys.run(state.run_id), "doc") or ""))
    assert sizes[-1] == pytest.approx(sizes[0], abs=16)  # the step counter's digits
    assert client.llen(keys.run_messages(state.run_id)) == 21
    assert client.llen(keys.run_completed(state.run_id)) == 20
    fresh = RunStore(client, run_ttl_s=3600).load(state.run_id)
    assert fresh.messages == state.messages
    assert fresh.completed_actions == state.completed_actions
    assert fresh.version == state.version


def test_a_change_that_is_not_an_append_writes_the_list_anew(store: RunStore) -> None:
    event = _event("evt-rewrite")
    state, _ = store.create(event, _state(event))
    state = store.update(state.run_id, lambda s: _tool_turn(s, 0)) or state
    replaced = [ChatMessage(role="user", content="only this")]
    store.update(state.run_id, lambda s: s.model_copy(update={"messages": replaced}))
    assert RunStore(store.client, run_ttl_s=3600).load(state.run_id).messages == replaced


def test_a_reader_ignores_entries_appended_after_the_document_it_read(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event("evt-between")
    state, _ = store.create(event, _state(event))
    # As if a commit's append landed between a reader's document and its lists.
    client.rpush(keys.run_messages(state.run_id), ChatMessage(role="user").model_dump_json())
    assert RunStore(client, run_ttl_s=3600).load(state.run_id).messages == state.messages


def test_a_state_stored_whole_in_its_document_still_loads_and_commits(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event("evt-legacy")
    legacy = _state(event, version=0)
    client.hset(
        keys.run(legacy.run_id),
        mapping={"doc": legacy.model_dump_json(), "version": 1, "status": "queued"},
    )
    loaded = store.load(legacy.run_id)
    assert loaded.messages == legacy.messages
    store.update(legacy.run_id, lambda s: _tool_turn(s, 0))
    again = RunStore(client, run_ttl_s=3600).load(legacy.run_id)
    assert [m.role for m in again.messages] == ["user", "tool"]
    assert len(again.completed_actions) == 1


def test_trace_gives_each_model_call_its_whole_input(store: RunStore) -> None:
    run_id = "run_trace_inputs"
    said = [{"role": "user", "content": "hi"}]
    answer = {"role": "assistant", "content": None}
    tool = {"role": "tool", "content": "4"}
    store.log.append(run_id, EventKind.model_call, 0, messages_from=0, messages=said)
    store.log.append(run_id, EventKind.decision, 0)
    last = store.log.append(
        run_id, EventKind.model_call, 1, messages_from=1, messages=[answer, tool]
    )
    entries = store.log.read(run_id)
    calls = [e for _, e in entries if e.kind == EventKind.model_call]
    assert [c.data["messages"] for c in calls] == [said, [*said, answer, tool]]
    assert "messages_from" not in calls[1].data
    # Read from a later entry on, the input is still made whole from what came before.
    after = store.log.read(run_id, entries[1][0])
    assert [e.data["messages"] for _, e in after] == [[*said, answer, tool]]
    assert after[0][1].step == last.step


def test_scripts_go_by_sha_and_come_back_to_a_redis_that_lost_them(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event("evt-noscript")
    state, _ = store.create(event, _state(event))
    store.begin_task()
    try:
        assert store.budgets.reserve(state.run_id, "model:0", tokens=100).granted
        store.budgets.settle(state.run_id, "model:0", tokens=-40, cost_usd=0.0)  # held back
        client.script_flush()  # as a restarted Redis, or a failover to a replica
        committed = store.update(
            state.run_id,
            lambda s: s.model_copy(update={"step": 1}),
            tool_calls=("tools:0", 1),
        )
    finally:
        store.end_task()
    assert committed is not None and committed.version == state.version + 1
    usage = store.budgets.usage(state.run_id)
    assert (usage.tokens, usage.tool_calls) == (60, 1)
    assert store.load(state.run_id).step == 1


def test_a_stale_commit_catches_up_from_its_reply_without_a_read(
    store: RunStore, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = _event("evt-stale")
    state, _ = store.create(event, _state(event))
    other = RunStore(client, run_ttl_s=3600)  # another planner process
    other.load(state.run_id)
    for i in range(3):
        other.update(state.run_id, lambda s, i=i: _tool_turn(s, i))

    def no_read(run_id: str) -> None:
        raise AssertionError("read the run again")

    monkeypatch.setattr(store, "get", no_read)
    # This store still holds the state it created: its first commit loses, and the reply
    # hands it what the other process appended, so the second commit goes through.
    committed = store.update(state.run_id, lambda s: _tool_turn(s, 3))
    monkeypatch.undo()
    assert committed is not None and committed.step == 4
    assert [m.tool_call_id for m in committed.messages[1:]] == [f"call_{i}" for i in range(4)]
    assert RunStore(client, run_ttl_s=3600).load(state.run_id).messages == committed.messages


def test_a_stale_commit_after_a_list_was_written_anew_reads_it_again(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event("evt-stale-rewrite")
    state, _ = store.create(event, _state(event))
    other = RunStore(client, run_ttl_s=3600)
    replaced = [ChatMessage(role="user", content="only this")]
    other.update(state.run_id, lambda s: s.model_copy(update={"messages": replaced}))
    committed = store.update(state.run_id, lambda s: _tool_turn(s, 0))
    assert committed is not None
    assert [m.content for m in committed.messages] == ["only this", "x" * 4096]


# event kinds and the parts' shared view of runs --------------------------------------


def test_event_kinds_are_stored_as_their_names_and_unknown_kinds_are_refused(
    store: RunStore, client: redis.Redis
) -> None:
    # Stored logs are read back by these values: each kind is spelled as its name.
    assert [k.value for k in EventKind] == [k.name for k in EventKind]
    store.log.append("run_kinds", EventKind.model_call, 0)
    ((_, fields),) = client.xrange(keys.run_log("run_kinds"))
    assert json.loads(fields["event"])["kind"] == "model_call"
    assert client.xrange(keys.LIFECYCLE_STREAM)[-1][1]["kind"] == "model_call"
    (_, read), *_ = store.log.read("run_kinds")
    assert read.kind is EventKind.model_call
    with pytest.raises(ValueError, match="kind"):
        store.log.append("run_kinds", "modelcall", 0)  # type: ignore[arg-type]
    assert client.xlen(keys.run_log("run_kinds")) == 1


def test_an_append_inside_a_task_waits_for_a_live_run_but_not_for_one_that_ended(
    store: RunStore, client: redis.Redis
) -> None:
    event = _event("evt-ended")
    state, _ = store.create(event, _state(event))
    store.begin_task()
    try:
        store.log.append(state.run_id, EventKind.observation, 0)
        assert client.xlen(keys.run_log(state.run_id)) == 0  # held for the next round trip
        store.update(state.run_id, lambda s: s.model_copy(update={"status": RunStatus.failed}))
        assert client.xlen(keys.run_log(state.run_id)) == 1  # went with the commit
        # The log knows from the store's own commit that the run ended: no holding back,
        # since no later commit of this run will carry it.
        store.log.append(state.run_id, EventKind.duplicate_step, 1)
        assert client.xlen(keys.run_log(state.run_id)) == 2
    finally:
        store.end_task()


def test_known_states_keep_the_most_recent_runs() -> None:
    known = KnownStates(capacity=2)
    states = [_state(_event(f"evt-known-{n}")) for n in range(3)]
    for state in states:
        known.remember(state)
    assert known.recall(states[0].run_id) is None  # the oldest left first
    assert known.recall(states[2].run_id) is states[2]
    known.forget(states[2].run_id)
    assert known.recall(states[2].run_id) is None
