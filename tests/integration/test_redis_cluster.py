"""Run state on a Redis Cluster: a real three-node cluster, real workers, whole runs.

TETHER_REDIS_URL names one node of a cluster started here (redis-server in
cluster mode on free ports) and TETHER_REDIS_CLUSTER is set; the broker is a
plain Redis of its own. Runs with tool calls and a human approval go through
all three services; their keys spread over the nodes, and the writes a commit
makes to other slots (lifecycle stream, indexes, a thread's history) arrive
exactly once; a thread's runs keep their order. Every service logs in as its
own user of the deploy ACL (deploy/redis/users.acl), as in production.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from tests.agents import read_ledger
from tests.integration.helpers import pending_escalation, wait_for, wait_status
from tests.stacks import started_stack
from tether import client
from tether.agent.definition import load_agent_modules
from tether.config import Settings
from tether.dev.redis_server import LocalCluster, RedisServer, render_acl
from tether.dev.stack import DevStack
from tether.errors import ConfigError
from tether.evaluation.replay import replay
from tether.insights.stats import compute
from tether.memory import forget, longterm, threads
from tether.observability import metrics
from tether.planner import intake, reconcile
from tether.runtime import Runtime
from tether.store import keys, spill
from tether.store.batch import WriteBatch
from tether.store.connection import connect
from tether.store.runs import run_id_for
from tether.store.scripts import Script
from tether.transport.wire import TaskEvent, Verdict

ROOT = Path(__file__).resolve().parents[2]
USERS = ("planner", "executor", "escalation", "operator", "flower", "monitor")
SERVICES = ("planner", "executor", "escalation")


@pytest.fixture(scope="module")
def cluster() -> LocalCluster:
    """Started here, stopped by cluster_stack once its workers are gone."""
    return LocalCluster(nodes=3).start()


@pytest.fixture(scope="module")
def cluster_stack(
    cluster: LocalCluster, ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DevStack, Runtime]]:
    """Each service logs in to the cluster as its own user of deploy/redis/users.acl,
    and this process as the operator, so each test also checks what those users may do."""
    passwords = {user: secrets.token_hex(16) for user in USERS}
    template = (ROOT / "deploy" / "redis" / "users.acl").read_text()
    cluster.add_users(
        render_acl(template, {f"REDIS_{u.upper()}_PASSWORD": p for u, p in passwords.items()})
    )
    logs = Path(tmp_path_factory.mktemp("cluster-logs"))
    broker = RedisServer(appendonly=False).start()
    operator = cluster.url_as("operator", passwords["operator"])
    stack = DevStack(
        redis_url=operator,
        service_urls={s: cluster.url_as(s, passwords[s]) for s in SERVICES},
        broker_url=broker.url,
        agent_modules=["tests.agents", "tests.memory_agents"],
        log_dir=logs,
        env={"TETHER_REDIS_CLUSTER": "true", "LEDGER_DIR": str(ledger_dir)},
    )
    with started_stack(stack, then=[broker.cleanup, cluster.cleanup]):
        settings = Settings(redis_url=operator, broker_url=broker.url, redis_cluster=True)
        yield stack, Runtime(settings)


def _node_clients(cluster: LocalCluster) -> list[redis.Redis]:
    return [redis.Redis(port=s.port, decode_responses=True) for s in cluster.servers]


def _lifecycle(rt: Runtime) -> Counter[tuple[str, str, str]]:
    entries = rt.store.client.xrange(keys.LIFECYCLE_STREAM)
    return Counter((f["run_id"], f["kind"], f["step"]) for _, f in entries)


def test_runs_go_through_a_three_node_cluster(
    cluster: LocalCluster, cluster_stack: tuple[DevStack, Runtime]
) -> None:
    _, rt = cluster_stack
    run_ids = [client.submit("calculator", "What is 2 + 3?", runtime=rt) for _ in range(8)]
    paid = client.submit("payer", "Pay acme 500 cents", runtime=rt)

    # The approval waits in the pending index, which a spilled write filled.
    record = pending_escalation(rt, paid)
    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=rt)
    wait_status(rt, paid, "succeeded")
    for run_id in run_ids:
        assert wait_status(rt, run_id, "succeeded").result == "2 + 3 = 5"
    assert read_ledger().count(f"{paid} acme 500") == 1

    # Run state is spread over the nodes, each run's keys on one.
    holders = Counter()
    for node in _node_clients(cluster):
        docs = {k for k in node.scan_iter("tether:run:*") if k.count(":") == 2}
        holders.update({"nodes": 1} if docs else {})
        for run_id in [*run_ids, paid]:
            if keys.run(run_id) in docs:
                assert node.exists(keys.run_log(run_id), keys.budget(run_id)) == 2
    assert holders["nodes"] >= 2

    # Every log entry reached the lifecycle stream (another slot) once; nothing is left
    # to apply; the indexes on other nodes hold every run.
    for run_id in [*run_ids, paid]:
        # The last commit's writes to other slots are applied just after it, and the
        # writer removes an applied entry in its next round trip: both after the status a
        # reader waited for is already committed.
        spilled = keys.spill(keys.run(run_id))
        wait_for(lambda s=spilled: rt.store.client.llen(s) == 0, 10, f"{spilled} to empty")
    lifecycle = _lifecycle(rt)
    for run_id in [*run_ids, paid]:
        logged = Counter((run_id, e.kind, str(e.step)) for _, e in rt.store.log.read(run_id))
        assert logged == Counter({k: n for k, n in lifecycle.items() if k[0] == run_id})
        assert rt.store.client.zscore(keys.RUN_INDEX, run_id) is not None
    assert rt.store.client.zcard(keys.PENDING_ESCALATIONS) == 0
    assert rt.store.client.zscore(keys.ALL_ESCALATIONS, record.escalation.escalation_id)
    # The rollups the end commits spilled to other slots count each run once.
    figures = compute(rt.store, since=timedelta(hours=1))
    assert (figures.runs.finished, figures.success_rate.succeeded) == (9, 9)
    assert figures.escalation_rate.escalated == 1  # the payment waited for alice


def test_writes_left_by_a_dead_writer_are_applied_once_by_the_reconciler(
    cluster_stack: tuple[DevStack, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, rt = cluster_stack
    store = rt.store
    event_id = uuid.uuid4().hex
    run_id = run_id_for(event_id)
    # The planner dies between its commit and applying what the commit spilled: here,
    # the commit of the run's creation, written with the application skipped.
    load_agent_modules(["tests.agents"])
    monkeypatch.setattr(spill, "settle", lambda *args: None)
    worker_rt = Runtime(rt.settings)
    monkeypatch.setattr(worker_rt, "send_step", lambda run_id, step: None)
    event = TaskEvent(event_id=event_id, agent="calculator", input="What is 2 + 3?")
    intake.start(worker_rt, event.model_dump(mode="json"))
    monkeypatch.undo()
    left = store.client.lrange(keys.spill(keys.run(run_id)), 0, -1)
    assert len(left) == 2  # the creating commit's, and the first step's
    assert (run_id, "run_started", "0") not in _lifecycle(rt)

    # Applied twice over (a settler that died before removing it, then the reconciler):
    # the markers let it in once.
    spill.settle(store.batch, keys.spill(keys.run(run_id)), left)
    store.client.rpush(keys.spill(keys.run(run_id)), *left)
    store.client.zadd(keys.ACTIVE_RUNS, {run_id: 0})
    reconcile.sweep(rt, stalled_after_s=0)
    # The re-driven step may already have spilled a commit of its own: only those left go.
    remaining = store.client.lrange(keys.spill(keys.run(run_id)), 0, -1)
    assert not set(left) & set(remaining)
    assert store.client.zscore(keys.RUN_INDEX, run_id) is not None
    # An entry no commit wrote (a service that may append to spill lists, misused) gets
    # nothing past its own rights: run state and results are not among what spills.
    forged = spill.encode(
        [("HSET", keys.run(run_id), ["doc", "{}"]), ("DEL", keys.budget(run_id), [])]
    )
    store.client.rpush(keys.spill(keys.run(run_id)), forged)
    assert store.settle_spill(run_id) == 1
    assert store.client.hget(keys.run(run_id), "doc") != "{}"
    assert store.client.exists(keys.budget(run_id))
    # The sweep also re-drove the run, which the workers then finished; every entry of
    # its log is in the lifecycle stream once.
    assert wait_status(rt, run_id, "succeeded").result == "2 + 3 = 5"

    def logged() -> Counter[tuple[str, str, str]]:
        return Counter((run_id, e.kind, str(e.step)) for _, e in store.log.read(run_id))

    def lifecycle() -> Counter[tuple[str, str, str]]:
        return Counter({k: n for k, n in _lifecycle(rt).items() if k[0] == run_id})

    # On a cluster the last commit's lifecycle lines (another slot) are applied just after
    # it, so they may land a moment after the status reads succeeded; and a delivery the
    # sweep doubled may still log that it was ignored.
    wait_for(lambda: logged() == lifecycle(), timeout_s=10, what="the last lifecycle lines")
    assert logged() == lifecycle()


def test_a_thread_runs_in_publish_order_across_slots(
    cluster_stack: tuple[DevStack, Runtime],
) -> None:
    _, rt = cluster_stack
    thread = f"t-{uuid.uuid4().hex[:8]}"
    # Published at once: the thread's keys share one slot, its runs' keys others.
    run_ids = [
        client.submit("threaded", f"slow {thread} {i}", thread_id=thread, runtime=rt)
        for i in range(3)
    ]
    states = [client.wait(r, timeout_s=60, runtime=rt) for r in run_ids]
    assert [s.status for s in states] == ["succeeded"] * 3
    for before, after in itertools.pairwise(states):
        assert before.finished_at is not None and after.created_at >= before.finished_at
    assert json.loads(states[2].result or "{}")["earlier"] == [s.result[:80] for s in states[:2]]
    # The last run's turn is on the thread's slot, written just after its terminal commit.
    wait_for(
        lambda: len(threads.turns(rt, thread)) == len(run_ids), timeout_s=10, what="the last turn"
    )
    assert [t.run_id for t in threads.turns(rt, thread)] == run_ids
    assert rt.store.client.llen(keys.thread_queue(thread)) == 0
    assert rt.store.client.zscore(keys.THREADS, thread) is not None


def test_memory_is_written_once_with_its_log_entry_and_forgotten_on_a_cluster(
    cluster: LocalCluster, cluster_stack: tuple[DevStack, Runtime]
) -> None:
    _, rt = cluster_stack
    who = f"cust-{uuid.uuid4().hex[:8]}"
    meta = {"customer_id": who}
    thread = f"m-{uuid.uuid4().hex[:8]}"
    wrote = client.wait(
        client.submit(
            "memo", "remember last_order=1042", metadata=meta, thread_id=thread, runtime=rt
        ),
        runtime=rt,
    )
    assert wrote.status == "succeeded"
    entries = [(i, e) for i, e in rt.store.log.read(wrote.run_id) if e.kind == "memory_write"]
    assert [e.data["value"] for _, e in entries] == ["1042"]
    assert _lifecycle(rt)[(wrote.run_id, "memory_write", str(entries[0][1].step))] == 1
    assert "memo" in longterm.agents(rt.store.client)
    assert rt.store.client.llen(keys.spill(keys.memory("memo", who))) == 0
    recalled = client.wait(
        client.submit("memo", "recall order", metadata=meta, runtime=rt), runtime=rt
    )
    assert "1042" in (recalled.result or "")

    forgotten = forget.forget_subject(rt, who, runs=True)
    assert sorted(forgotten.runs) == sorted([wrote.run_id, recalled.run_id])
    forget.forget_thread(rt, thread)
    left = [k for node in _node_clients(cluster) for k in node.scan_iter(f"*{who}*")]
    left += [k for node in _node_clients(cluster) for k in node.scan_iter(f"*{thread}*")]
    assert left == []


def test_queue_figures_come_from_the_broker_of_its_own(
    cluster_stack: tuple[DevStack, Runtime],
) -> None:
    _, rt = cluster_stack
    queue = f"tether.figures-{uuid.uuid4().hex[:8]}"  # no worker consumes it
    rt.broker.lpush(queue, "{}", "{}")
    try:
        figures = metrics.read_redis_figures(rt.store.client, (queue,), broker=rt.broker)
        assert [(q.queue, q.depth) for q in figures.queues] == [(queue, 2)]
    finally:
        rt.broker.delete(queue)


def test_a_run_on_a_cluster_replays_in_a_scratch_redis_of_its_own(
    cluster_stack: tuple[DevStack, Runtime],
) -> None:
    stack, rt = cluster_stack
    run_id = client.submit("calculator", "What is 2 + 3?", runtime=rt)
    wait_status(rt, run_id, "succeeded")
    with pytest.raises(ConfigError, match="--scratch-url"):
        replay(rt, run_id)
    assert stack.broker_url is not None
    report = replay(rt, run_id, scratch_redis=stack.broker_url.replace("/0", "/7"))
    assert not report.diverged and report.decision_points > 0
    assert report.replayed_status == "succeeded"


def test_commands_and_pipelines_ride_out_a_node_restart() -> None:
    # A cluster of its own: the module's serves the running stack.
    with LocalCluster(nodes=3) as restarting:
        client = connect(restarting.url, cluster=True)
        keys_by_node = _one_key_per_node(client, restarting)
        node = restarting.servers[0]
        node.kill()
        back = threading.Timer(1.5, node.start)
        back.start()
        try:
            started = time.monotonic()
            # Without riding out, redis-py gives up within milliseconds of a refused connection.
            client.set(keys_by_node[node.port], "after the restart")
            pipe = client.pipeline(transaction=False)
            for key in keys_by_node.values():
                pipe.incr(key + ":n")
            assert pipe.execute() == [1, 1, 1]
        finally:
            back.join()
        assert time.monotonic() - started >= 1.0  # it did wait for the node
        assert client.get(keys_by_node[node.port]) == "after the restart"


# A script that writes its key: where it ran is where its key lives.
PROBE = Script("test_redis_cluster/probe.lua", "redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]")


def test_a_script_a_node_lost_is_loaded_there_again_directly_and_in_a_pipeline() -> None:
    # A cluster of its own: the module's serves the running stack.
    with LocalCluster(nodes=3) as own:
        client = connect(own.url, cluster=True)
        keys_by_node = _one_key_per_node(client, own)
        lost, kept = own.servers[0], own.servers[1]
        assert [PROBE.run(client, keys=[k], args=["first"]) for k in keys_by_node.values()] == [
            "first"
        ] * 3
        # As a restart or a failover leaves a node: its script cache empty.
        redis.Redis(port=lost.port).script_flush()
        assert PROBE.run(client, keys=[keys_by_node[lost.port]], args=["direct"]) == "direct"
        redis.Redis(port=lost.port).script_flush()
        replies = WriteBatch(client).run(
            lambda pipe: [PROBE.add(pipe, 1, k, "piped") for k in keys_by_node.values()]
        )
        assert replies == ["piped"] * 3  # each ran once, the lost node's after its reload
        assert {client.get(k) for k in keys_by_node.values()} == {"piped"}
        for server in (lost, kept):
            assert redis.Redis(port=server.port).script_exists(PROBE.sha) == [True]


def _one_key_per_node(client: redis.Redis, cluster: LocalCluster) -> dict[int, str]:
    """A key held by each node, by the node's port."""
    found: dict[int, str] = {}
    for i in itertools.count():
        key = f"ride-out:{i}"
        port = client.get_node_from_key(key).port  # type: ignore[attr-defined]
        found.setdefault(port, key)
        if len(found) == len(cluster.servers):
            return found
    raise AssertionError("unreachable")
