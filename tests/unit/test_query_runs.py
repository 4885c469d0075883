"""Runs pages from the indexes a run's creating commit writes (tether.store.indexes)."""

from __future__ import annotations

from datetime import datetime, timedelta

from tether.query.runs import RunFilter, list_runs
from tether.runtime import Runtime
from tether.store import indexes, keys
from tether.store.indexes import RunKind
from tether.store.state import RunState, RunStatus
from tether.transport.wire import TaskEvent, utcnow


def _create(
    rt: Runtime,
    n: int,
    agent: str,
    *,
    primary: str | None = None,
    version: str = "v1",
    at: datetime | None = None,
) -> str:
    event = TaskEvent(event_id=f"ev-{agent}-{n}", agent=agent, input=f"task {n}")
    state = RunState(
        run_id=f"run_{n:020x}",
        event_id=event.event_id,
        agent=agent,
        agent_version=version,
        primary_run_id=primary,
        goal=event.input,
        created_at=at or utcnow() + timedelta(milliseconds=n),
    )
    rt.store.create(event, state, indexes=indexes.created(agent, primary, rt.settings.run_ttl_s))
    return state.run_id


def test_production_runs_apart_from_eval_and_shadow_runs(runtime: Runtime) -> None:
    support = [_create(runtime, n, "support") for n in range(1, 4)]
    billing = _create(runtime, 10, "billing", version="v2")
    evaluation = _create(runtime, 20, "eval:support")
    shadow = _create(runtime, 30, "support", primary=support[0])

    page = list_runs(runtime.store, RunFilter())
    assert [r.run_id for r in page.runs] == [billing, *reversed(support)]
    assert {r.kind for r in page.runs} == {RunKind.production}
    everything = list_runs(runtime.store, RunFilter(include_eval=True, include_shadow=True))
    assert [r.run_id for r in everything.runs] == [
        shadow,
        evaluation,
        billing,
        *reversed(support),
    ]
    only_support = list_runs(runtime.store, RunFilter(agent="support"))
    assert [r.run_id for r in only_support.runs] == list(reversed(support))
    with_shadow = list_runs(runtime.store, RunFilter(agent="support", include_shadow=True))
    assert with_shadow.runs[0].run_id == shadow
    assert with_shadow.runs[0].kind is RunKind.shadow
    assert [r.run_id for r in list_runs(runtime.store, RunFilter(version="v2")).runs] == [billing]


def test_pages_follow_each_other_without_overlap(runtime: Runtime) -> None:
    made = [_create(runtime, n, "support") for n in range(1, 8)]
    assert _all_pages(runtime, RunFilter(agent="support", limit=3)) == list(reversed(made))


def _all_pages(rt: Runtime, query: RunFilter) -> list[str]:
    """Every run the pages of ``query`` show, following each page's cursor."""
    seen: list[str] = []
    for _ in range(100):
        page = list_runs(rt.store, query)
        seen += [r.run_id for r in page.runs]
        if page.next_before is None:
            return seen
        query = query.model_copy(
            update={"before": page.next_before, "before_run": page.next_before_run}
        )
    raise AssertionError(f"pages never ended: {seen}")


def test_runs_created_at_one_instant_are_neither_skipped_nor_repeated_across_pages(
    runtime: Runtime,
) -> None:
    instant = utcnow()
    older = _create(runtime, 1, "support", at=instant - timedelta(seconds=1))
    # Upstream timestamps are often whole seconds: many runs share one.
    same = [_create(runtime, n, "support", at=instant) for n in range(2, 9)]
    newest_first = [*sorted(same, reverse=True), older]
    for limit in (1, 2, 3, 5):
        assert _all_pages(runtime, RunFilter(agent="support", limit=limit)) == newest_first
        assert _all_pages(runtime, RunFilter(limit=limit)) == newest_first


def test_status_filter_and_expired_runs_leave_the_index(runtime: Runtime) -> None:
    first, second = _create(runtime, 1, "support"), _create(runtime, 2, "support")
    runtime.store.update(first, lambda s: s.model_copy(update={"status": RunStatus.running}))
    running = list_runs(runtime.store, RunFilter(status=[RunStatus.running]))
    assert [r.run_id for r in running.runs] == [first]
    # A run the filter leaves out is still there: the index keeps it.
    production = runtime.store.client.zrange(indexes.by_kind(RunKind.production), 0, -1)
    assert production == [first, second]
    runtime.store.client.delete(f"tether:run:{{{second}}}")
    page = list_runs(runtime.store, RunFilter(agent="support"))
    assert [r.run_id for r in page.runs] == [first]
    index = indexes.by_agent(RunKind.production, "support")
    assert runtime.store.client.zrange(index, 0, -1) == [first]


def _status_indexes_holding(rt: Runtime, run_id: str, agent: str) -> list[tuple[str, str]]:
    """(index name, "kind"/"agent") for every status index of the run's population holding it."""
    client = rt.store.client
    names = dict.fromkeys(indexes.indexed_as(status) for status in RunStatus)
    return [
        (name, level)
        for name in names
        for level, index in (
            ("kind", keys.runs_of_status(RunKind.production, name)),
            ("agent", keys.runs_of_agent_status(RunKind.production, agent, name)),
        )
        if client.zscore(index, run_id) is not None
    ]


def test_a_runs_status_index_follows_its_transitions(runtime: Runtime) -> None:
    run_id = _create(runtime, 1, "support")
    holding = _status_indexes_holding
    assert holding(runtime, run_id, "support") == [("queued", "kind"), ("queued", "agent")]
    for status in (RunStatus.running, RunStatus.waiting_tools, RunStatus.succeeded):
        runtime.store.update(run_id, lambda s, to=status: s.model_copy(update={"status": to}))
        held = indexes.indexed_as(status)
        assert holding(runtime, run_id, "support") == [(held, "kind"), (held, "agent")]
        page = list_runs(runtime.store, RunFilter(status=[status]))
        assert [r.run_id for r in page.runs] == [run_id]
        assert list_runs(runtime.store, RunFilter(status=[RunStatus.queued])).runs == []
    # A commit that changes something else leaves the status indexes as they are.
    runtime.store.update(run_id, lambda s: s.model_copy(update={"step": s.step + 1}))
    assert holding(runtime, run_id, "support") == [("succeeded", "kind"), ("succeeded", "agent")]
    # An event delivered again creates nothing, so it puts the run back in no index.
    state = runtime.store.load(run_id)
    event = TaskEvent(event_id=state.event_id, agent="support", input=state.goal)
    fresh = state.model_copy(update={"status": RunStatus.queued, "version": 0})
    assert runtime.store.create(event, fresh)[1] is False
    assert holding(runtime, run_id, "support") == [("succeeded", "kind"), ("succeeded", "agent")]


def test_a_losing_commit_moves_no_status_index(runtime: Runtime) -> None:
    run_id = _create(runtime, 1, "support")
    stale = runtime.store.load(run_id)
    runtime.store.update(run_id, lambda s: s.model_copy(update={"status": RunStatus.running}))
    # Another process, still holding version 1 (queued), commits failed over it and loses.
    other = type(runtime.store)(runtime.store.client)
    other.known.remember(stale)
    tries: list[RunStatus] = []

    def fail(s: RunState) -> RunState | None:
        tries.append(s.status)
        return (
            s.model_copy(update={"status": RunStatus.failed})
            if s.status is RunStatus.queued
            else None
        )

    assert other.update(run_id, fail) is None
    assert tries == [RunStatus.queued, RunStatus.running]
    assert _status_indexes_holding(runtime, run_id, "support") == [
        ("in_progress", "kind"),
        ("in_progress", "agent"),
    ]


def _calls(rt: Runtime, command: str) -> int:
    stats = rt.store.client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_a_status_page_among_10000_runs_reads_only_the_runs_on_it(runtime: Runtime) -> None:
    made = [_create(runtime, n, "support" if n % 2 else "billing") for n in range(10_000)]
    # The oldest runs failed: a scan from the newest would meet thousands of others first.
    failed = made[:60]
    for run_id in failed:
        runtime.store.update(run_id, lambda s: s.model_copy(update={"status": RunStatus.failed}))
    before = _calls(runtime, "hget")
    page = list_runs(runtime.store, RunFilter(status=[RunStatus.failed], limit=25))
    assert [r.run_id for r in page.runs] == list(reversed(failed))[:25]
    # One field of each run on the page (its document), no other run read.
    assert _calls(runtime, "hget") - before == 25
    support = [r for r in failed if int(r.removeprefix("run_"), 16) % 2]
    before = _calls(runtime, "hget")
    page = list_runs(runtime.store, RunFilter(agent="support", status=[RunStatus.failed], limit=20))
    assert [r.run_id for r in page.runs] == list(reversed(support))[:20]
    assert _calls(runtime, "hget") - before == 20
    rest = _all_pages(runtime, RunFilter(status=[RunStatus.failed], limit=25))
    assert rest == list(reversed(failed))


def test_a_step_between_running_and_waiting_tools_moves_no_status_index(
    runtime: Runtime,
) -> None:
    runs = [_create(runtime, n, "support") for n in range(1, 5)]
    for run_id in runs:
        runtime.store.update(run_id, lambda s: s.model_copy(update={"status": RunStatus.running}))
    waiting = runs[1::2]
    before = {name: _calls(runtime, name) for name in ("zadd", "zrem", "expire")}
    for run_id in waiting:
        runtime.store.update(
            run_id, lambda s: s.model_copy(update={"status": RunStatus.waiting_tools})
        )
    # The steps' commits moved no index entry (running and waiting_tools share one): their
    # only ZADD each is the unfinished run's last-commit mark (keys.ACTIVE_RUNS).
    after = {name: _calls(runtime, name) for name in before}
    assert after == {**before, "zadd": before["zadd"] + len(waiting)}
    # A filter on one of the two still shows only its own runs, newest first.
    running = list_runs(runtime.store, RunFilter(status=[RunStatus.running]))
    assert [r.run_id for r in running.runs] == [runs[2], runs[0]]
    on_tools = list_runs(
        runtime.store, RunFilter(agent="support", status=[RunStatus.waiting_tools])
    )
    assert [r.run_id for r in on_tools.runs] == [runs[3], runs[1]]
    both = list_runs(
        runtime.store, RunFilter(status=[RunStatus.running, RunStatus.waiting_tools], limit=3)
    )
    assert [r.run_id for r in both.runs] == list(reversed(runs))[:3]
    assert _all_pages(runtime, RunFilter(status=[RunStatus.running], limit=1)) == [
        runs[2],
        runs[0],
    ]
