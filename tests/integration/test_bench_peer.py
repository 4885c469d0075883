"""The peer (LangGraph on PostgreSQL) in the bench, on a tiny plan, so it cannot rot unnoticed.

As in test_bench.py, timings are not judged: what is checked is that each figure
comes from real runs (Tether's on real workers, LangGraph's on a PostgreSQL
server the bench starts), reaches the JSON, the table and the printed lines in
the form `make bench` prints them; that without PostgreSQL the bench says so in
one line and goes on; and that a PostgreSQL it borrows keeps every database but
the one it made, and not that one either once done.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("langgraph.checkpoint.postgres", reason="the bench extra is not installed")

import psycopg

from bench import postgres as bench_postgres
from bench.driver import Driver
from bench.overhead import start_stack
from bench.peer import measure_peer, peer_lines
from bench.peer_graph import Graph
from bench.plan import TARGET_PEER_LONG_RATIO, TARGET_PEER_RATIO, Plan, Results
from bench.procs import Workers
from bench.report import table
from tether.dev.redis_server import RedisServer

pytestmark = pytest.mark.skipif(
    bench_postgres.find_binaries() is None,
    reason="no PostgreSQL binaries (initdb, postgres) on PATH or under "
    "/usr/lib/postgresql/*/bin; .ci/run installs Debian's postgresql",
)

NUMBER = r"(\d+\.\d\d)"
PEER_LINE = re.compile(
    rf"peer: langgraph\+postgres\(sync\) {NUMBER} ms/step, cpu {NUMBER} ms/step; "
    rf"tether/peer {NUMBER} \(time\), {NUMBER} \(cpu\)"
)
LONG_LINE = re.compile(
    rf"peer long-run: step (\d+) with 4 KB outputs, langgraph {NUMBER} ms, "
    rf"tether {NUMBER} ms, tether/peer {NUMBER}"
)


def test_bench_measures_langgraph_on_postgres_beside_tether(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Enough steps that PostgreSQL's CPU, read in 10 ms clock ticks, shows in each mode.
    plan = Plan(quick=True, steps=5, warmup=1, peer_rounds=2, peer_runs=4)
    plan.long_steps, plan.long_window = 6, 2
    res = Results()
    with RedisServer() as server:
        driver = Driver(server.url)
        workers = start_stack(server.url, 1, tmp_path / "logs")
        try:
            measure_peer(plan, driver, workers, res)
        finally:
            workers.stop()

    p = res.peer
    assert "skipped" not in p, p
    assert p["postgres"]["kind"] == "started" and p["postgres"]["server_version"]
    assert (p["postgres"]["synchronous_commit"], p["postgres"]["fsync"]) == ("off", "on")
    assert (p["steps_per_run"], p["rounds"], p["runs_per_round"]) == (5, 2, 4)
    sides = {"tether", "sync", "async"}
    assert set(p["ms_per_step"]) == set(p["cpu_ms_per_step"]) == sides
    for side in sides:
        assert p["ms_per_step"][side]["median"] > 0 and p["cpu_ms_per_step"][side] > 0
        assert len(p["ms_per_step_by_round"][side]) == len(p["cpu_ms_per_step_by_round"][side]) == 2
    # The peer's CPU counts PostgreSQL's server processes too, as Tether's counts Redis's.
    for durability in ("sync", "async"):
        server_cpu = p["postgres_cpu_ms_per_step"][durability]
        assert 0 < server_cpu < p["cpu_ms_per_step"][durability]
    tether, sync = p["ms_per_step"]["tether"]["median"], p["ms_per_step"]["sync"]["median"]
    assert p["ratio"]["time"] == round(tether / sync, 3)
    assert p["ratio"]["cpu"] == round(
        p["cpu_ms_per_step"]["tether"] / p["cpu_ms_per_step"]["sync"], 3
    )
    lr = p["long"]
    assert (lr["steps"], lr["window"], lr["tool_output_bytes"]) == (6, 2, 4096)
    assert all(lr[end][side] > 0 for end in ("step_1_ms", "step_n_ms") for side in sides)
    assert lr["ratio"] == round(lr["step_n_ms"]["tether"] / lr["step_n_ms"]["sync"], 3)
    # Every step writes its 4 KB output at least once, and LangGraph's checkpoints
    # rewrite the whole history each time, so what a step sends grows with the run.
    sent = lr["peer_bytes_per_step"]
    assert len(sent) == 6 and min(sent) > 4096
    assert sent[-1] > sent[0] + 4 * 4096

    printed = capsys.readouterr().err
    line = PEER_LINE.search(printed)
    assert line is not None, printed
    assert float(line[1]) == round(sync, 2) and float(line[3]) == round(p["ratio"]["time"], 2)
    long = LONG_LINE.search(printed)
    assert long is not None, printed
    assert int(long[1]) == 6 and float(long[4]) == round(lr["ratio"], 2)
    lines = peer_lines(p)
    assert PEER_LINE.fullmatch(lines[0]) and LONG_LINE.fullmatch(lines[2]), lines

    rows = {row[0].strip(): row for row in table(res)}
    ratio_row = rows["Tether / peer (sync), time; CPU"]
    assert ratio_row[2] == f"<= {TARGET_PEER_RATIO}x"
    assert ratio_row[3] == ("met" if p["ratio"]["time"] <= TARGET_PEER_RATIO else "NOT met")
    long_row = rows["Peer long run: step 6 with 4 KB outputs, Tether / LangGraph (sync), ms"]
    assert long_row[2] == f"<= {TARGET_PEER_LONG_RATIO}x"


def test_without_postgresql_the_peer_is_skipped_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_postgres, "find_binaries", lambda: None)
    # A loopback port that nothing listens on: the machine's own 5432 is never touched.
    monkeypatch.setattr(
        bench_postgres, "LOOPBACK", f"postgresql://postgres@127.0.0.1:{_closed_port()}"
    )
    res = Results()
    with RedisServer() as server:
        measure_peer(Plan(quick=True), Driver(server.url), Workers(server.url), res)

    reason = res.peer["skipped"]
    assert reason.startswith("no PostgreSQL: no initdb/postgres on PATH")
    assert "apt-get install postgresql" in reason
    assert peer_lines(res.peer) == [f"peer: skipped ({reason})"]
    assert f"peer: skipped ({reason})" in capsys.readouterr().err
    rows = table(res)
    assert [row[1] for row in rows if row[0].startswith("Peer")] == [f"skipped ({reason})"]


def test_without_langgraph_the_peer_is_skipped_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "langgraph.checkpoint.postgres", None)
    started: list[object] = []
    monkeypatch.setattr(bench_postgres, "postgres", lambda: started.append(1))
    res = Results()
    with RedisServer() as server:
        measure_peer(Plan(quick=True), Driver(server.url), Workers(server.url), res)

    assert res.peer == {
        "skipped": "no LangGraph: langgraph.checkpoint.postgres is not installed; make "
        "bench-deps (pip install -e '.[bench]') installs the bench extra"
    }
    assert not started  # no PostgreSQL is started for a peer that cannot run
    assert f"peer: skipped ({res.peer['skipped']})" in capsys.readouterr().err


def test_a_borrowed_postgresql_keeps_its_databases_and_loses_the_benchs_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    binaries = bench_postgres.find_binaries()
    assert binaries is not None
    with bench_postgres._started(binaries) as lender:
        admin = lender.url
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE someone_elses")
            # The server the bench starts flushes its WAL as the bench's Redis flushes its AOF.
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
            assert conn.execute("SHOW fsync").fetchone() == ("on",)
        base = admin.rsplit("/", 1)[0]
        monkeypatch.setattr(bench_postgres, "find_binaries", lambda: None)
        monkeypatch.setattr(bench_postgres, "LOOPBACK", base)

        with bench_postgres.postgres() as borrowed:
            assert borrowed.kind == "loopback" and borrowed.url == f"{base}/tether_bench"
            assert borrowed.postmaster == lender.postmaster
            graph = Graph(borrowed.url)
            try:
                assert graph.run(2, "sync") > 0
            finally:
                graph.close()
            assert _databases(admin) >= {"tether_bench", "someone_elses", "postgres"}
        assert "tether_bench" not in _databases(admin)
        assert "someone_elses" in _databases(admin)
        with psycopg.connect(f"{base}/someone_elses") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def _databases(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def _closed_port() -> int:
    from tether.dev.redis_server import free_port

    return free_port()
