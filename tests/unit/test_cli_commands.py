"""CLI commands against the suite's own Redis (no workers): what they print and refuse."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from rich.console import Console
from typer.testing import CliRunner

from tests.unit.run_records import make_run as write_run
from tether import runtime as runtime_module
from tether.cli import connection, render
from tether.cli.main import app
from tether.config import Settings, get_settings
from tether.dev.redis_server import RedisServer
from tether.escalation import records
from tether.runtime import Runtime
from tether.store import indexes, keys
from tether.store.runs import RunStore, run_id_for
from tether.store.state import RunStatus
from tether.transport.wire import ErrorCategory, Escalation, EscalationKind, ToolAction
from tether.worker import deadletters
from tether.worker.task import parse


@pytest.fixture
def cli(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The CLI pointed at the suite's Redis, with the agents of tests.agents declared."""
    monkeypatch.setenv("TETHER_REDIS_URL", redis_url)
    monkeypatch.setenv("TETHER_AGENT_MODULES", '["tests.agents"]')
    get_settings.cache_clear()
    rt = Runtime(Settings(redis_url=redis_url))
    monkeypatch.setattr(runtime_module, "_runtime", rt)
    monkeypatch.setattr(connection, "_checked", None)
    yield rt
    get_settings.cache_clear()


def make_run(store: RunStore, name: str, **given: Any) -> str:
    """A run as run_records.make_run writes it, in the indexes intake writes too."""
    run_id = write_run(store, name, **given)
    state = store.load(run_id)
    for index, _ in indexes.created(state.agent, None, 3600):
        store.client.zadd(index, {run_id: state.created_at.timestamp()})
    return run_id


def run(*argv: str, width: int = 200) -> tuple[int, str]:
    """`tether ARGV` in this process, on a terminal ``width`` columns wide."""
    shared = render.console
    render.console = Console(width=width, emoji=False, color_system=None)
    try:
        result = CliRunner().invoke(app, list(argv), terminal_width=width)
    finally:
        render.console = shared
    return result.exit_code, result.output


def published_events(rt: Runtime) -> list[dict[str, object]]:
    """The TaskEvents waiting on the planner's queue, as published."""
    bodies = rt.store.client.lrange("tether.plan", 0, -1)
    events = []
    for raw in bodies:
        message = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        events.append(kwargs["event"])
    return events


def test_submit_prints_event_and_run_id(cli: Runtime) -> None:
    code, out = run("submit", "calculator", "2+2", "--event-id", "ev-1", "--meta", "k=v=w")
    assert code == 0, out
    assert "event ev-1" in out and run_id_for("ev-1") in out
    (event,) = published_events(cli)
    assert event["metadata"] == {"k": "v=w"}


def test_submit_refuses_malformed_meta(cli: Runtime) -> None:
    code, out = run("submit", "calculator", "2+2", "--meta", "customer_id:c1")
    assert code == 2
    assert "customer_id:c1" in out and "KEY=VALUE" in out
    assert published_events(cli) == []


def test_submit_refuses_an_unknown_agent_before_publishing(cli: Runtime) -> None:
    code, out = run("submit", "nosuchagent", "hello")
    assert code == 2
    assert "nosuchagent" in out and "calculator" in out  # says which agents are known
    assert published_events(cli) == []


def test_runs_show_of_a_missing_run_points_to_rejected(cli: Runtime, redis_url: str) -> None:
    code, out = run("runs", "show", "run_nope")
    assert code == 2
    assert "tether runs rejected --event" in out
    assert redis_url in out


def test_runs_list_leaves_out_eval_runs_and_filters_by_agent(cli: Runtime) -> None:
    now = datetime.now(UTC)
    make_run(cli.store, "a", created=now, agent="calc")
    make_run(cli.store, "b", created=now, agent="other")
    make_run(cli.store, "c", created=now, agent="eval:calc")
    code, out = run("runs", "list", "--json")
    assert code == 0
    assert sorted(r["agent"] for r in json.loads(out)) == ["calc", "other"]
    code, out = run("runs", "list", "--json", "--include-eval")
    assert sorted(r["agent"] for r in json.loads(out)) == ["calc", "eval:calc", "other"]
    code, out = run("runs", "list", "--json", "--agent", "other")
    assert [r["run_id"] for r in json.loads(out)] == [run_id_for("b")]


def test_runs_list_fits_80_columns(cli: Runtime) -> None:
    for name in ("a", "b"):
        make_run(
            cli.store,
            name,
            created=datetime.now(UTC),
            agent="support_desk",
            status=RunStatus.waiting_human,
        )
    code, out = run("runs", "list", width=80)
    assert code == 0
    assert all(len(line) <= 80 for line in out.splitlines()), out
    header = next(line for line in out.splitlines() if "goal" in line)
    # At 80 columns the step and the update time are left to `runs show`.
    assert _cells(header) == ["run", "agent", "status", "goal"]
    row = _cells(next(line for line in out.splitlines() if run_id_for("a") in line))
    # Whole, on one line: ids, agent and status are never cut; the goal gets the rest.
    assert row == [run_id_for("a"), "support_desk", "waiting_human", "task a"]
    code, out = run("runs", "list", width=120)
    header = next(line for line in out.splitlines() if "goal" in line)
    assert _cells(header) == ["run", "agent", "status", "step", "goal", "updated"]


def test_runs_show_and_trace_json(cli: Runtime) -> None:
    run_id = make_run(cli.store, "a", created=datetime.now(UTC))
    code, out = run("runs", "show", run_id, "--json")
    assert code == 0 and json.loads(out)["run_id"] == run_id
    cli.store.log.append(run_id, "tool_call", 1, tool="add", arguments={"a": "x" * 300}, ok=True)
    cli.store.flush()
    code, out = run("runs", "trace", run_id, "--json")
    assert code == 0
    assert [e["kind"] for e in json.loads(out)][-1] == "tool_call"
    _, cut = run("runs", "trace", run_id)
    _, full = run("runs", "trace", run_id, "--full")
    assert "x" * 300 not in cut.replace("\n", "").replace(" ", "").replace("│", "")
    assert "x" * 300 in full.replace("\n", "").replace(" ", "").replace("│", "")


def test_runs_trace_follow_ends_with_the_run(cli: Runtime) -> None:
    run_id = make_run(cli.store, "a", created=datetime.now(UTC), status=RunStatus.failed)
    cli.store.log.append(run_id, "run_finished", 2, status="failed")
    cli.store.flush()
    code, out = run("runs", "trace", run_id, "--follow", "--json", "--timeout", "5")
    assert code == 0
    assert json.loads(out.splitlines()[-1])["kind"] == "run_finished"


def test_runs_retry_makes_a_new_run_linked_to_the_failed_one(cli: Runtime) -> None:
    run_id = make_run(cli.store, "a", created=datetime.now(UTC), status=RunStatus.failed)
    code, out = run("runs", "retry", run_id)
    assert code == 0, out
    (event,) = published_events(cli)
    assert event["event_id"] != "a"
    assert event["metadata"] == {"retry_of": run_id}
    assert event["input"] == "task a"
    assert run_id_for(str(event["event_id"])) in out


def test_unreachable_redis_is_one_line_within_3_s(
    cli: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module, "_runtime", None)
    monkeypatch.setenv("TETHER_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    commands = [
        ["runs", "list"],
        ["runs", "show", "run_x"],
        ["runs", "trace", "run_x"],
        ["runs", "rejected"],
        ["runs", "retry", "run_x"],
        ["escalations", "list"],
        ["escalations", "show", "esc_x"],
        ["escalations", "approve", "esc_x"],
        ["dead", "list"],
        ["threads", "list"],
        ["memory", "show", "c-1"],
        ["stats"],
        ["top", "--json"],
        ["submit", "calculator", "hi"],
        ["feedback", "run_x", "--score", "1", "--by", "ann"],
        ["shadow", "report"],
        ["eval", "--adversarial", "calculator"],
    ]
    for argv in commands:
        monkeypatch.setattr(connection, "_checked", None)
        monkeypatch.setattr(runtime_module, "_runtime", None)
        started = time.monotonic()
        result = CliRunner().invoke(app, argv)
        assert time.monotonic() - started < 3, argv
        assert result.exit_code != 0, argv
        said = str(result.exception) + result.output
        assert "cannot use Redis at redis://127.0.0.1:1/0" in said, (argv, said)


def test_wrong_password_is_refused_in_one_line(
    cli: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RedisServer() as server:
        redis.Redis.from_url(server.url).config_set("requirepass", "right")
        monkeypatch.setattr(runtime_module, "_runtime", None)
        monkeypatch.setenv("TETHER_REDIS_URL", server.url.replace("redis://", "redis://:wrong@"))
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["escalations", "list"])
    assert isinstance(result.exception, connection.RedisUnreachableError)
    assert "refused" in str(result.exception)
    assert "wrong" not in str(result.exception)  # the password is not printed


def _escalation(
    rt: Runtime, name: str, *, agent: str = "support_desk", tool: str = "refund"
) -> str:
    run_id = make_run(
        rt.store,
        name,
        created=datetime.now(UTC),
        status=RunStatus.waiting_human,
        agent=agent,
        tool_calls=1,
    )
    escalation = Escalation(
        escalation_id=f"esc_{run_id}_1_0",  # as long as the planner's
        run_id=run_id,
        agent=agent,
        kind=EscalationKind.approval_required,
        reason=f"{tool} needs approval",
        action=ToolAction(
            action_id=f"{run_id}:1",
            run_id=run_id,
            agent=agent,
            step=1,
            tool=tool,
            tool_call_id="call_1",
            arguments={"order_id": "1001", "note": "a rather long explanation " * 4},
            idempotent=False,
        ),
    )
    records.open_escalation(rt, escalation)
    rt.store.flush()
    return escalation.escalation_id


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("│")]


def test_escalations_list_fits_80_columns_with_age_and_agent(cli: Runtime) -> None:
    escalation_id = _escalation(cli, "e1")
    for width, columns in (
        (80, ["id", "agent", "age", "asks"]),  # kind left to `show`
        (120, ["id", "agent", "kind", "age", "asks"]),
    ):
        code, out = run("escalations", "list", width=width)
        assert code == 0, out
        lines = out.splitlines()
        assert all(len(line) <= width for line in lines), out
        header = next(line for line in lines if "asks" in line)
        assert _cells(header) == columns, out
        row = _cells(next(line for line in lines if escalation_id in line))
        assert row[0] == escalation_id and row[1] == "support_desk"
        shown = row[-1]
        assert shown.endswith("…")  # the ask cut at the edge, whole in `show`
        # Cut between words: a prefix of the ask ending at a whole word.
        whole = 'refund needs approval: refund({"order_id": "1001", "note": "a rather long'
        assert whole.startswith(shown[:-1]) or shown[:-1].startswith(whole), shown
        assert not whole[len(shown) - 1 : len(shown)].isalnum(), shown


def test_escalations_show_has_the_request_and_the_held_call(cli: Runtime) -> None:
    escalation_id = _escalation(cli, "e1")
    code, out = run("escalations", "show", escalation_id)
    assert code == 0, out
    assert "request" in out and "task e1" in out
    assert '"order_id": "1001"' in out
    assert "tool results so far" in out and "add (step 0)" in out
    assert not out.lstrip().startswith("{")  # not the raw record
    code, out = run("escalations", "show", escalation_id, "--json")
    shown = json.loads(out)
    assert shown["escalation"]["escalation_id"] == escalation_id
    assert shown["context"]["request"] == "task e1"


def test_bulk_approve_by_filter_needs_a_filter(cli: Runtime) -> None:
    _escalation(cli, "e1")
    code, out = run("escalations", "approve", "--all")
    assert code == 2 and "--agent" in out


def test_bulk_approve_decides_what_the_filter_matches(cli: Runtime) -> None:
    first = _escalation(cli, "e1", tool="refund")
    second = _escalation(cli, "e2", tool="refund")
    other = _escalation(cli, "e3", tool="cancel_order")
    code, out = run(
        "escalations", "approve", "--all", "--tool", "refund", "--by", "ann", "--wait", "0"
    )
    assert code == 0, out
    assert first in out and second in out and other not in out
    assert "2 of 2 approved as ann" in out
    assert [d["by"] for d in _sent_decisions(cli)] == ["ann", "ann"]


def test_approve_with_edited_arguments_sends_them(cli: Runtime) -> None:
    escalation_id = _escalation(cli, "e1")
    code, out = run("escalations", "approve", escalation_id, "--args", "[1]", "--wait", "0")
    assert code == 2 and "JSON object" in out
    code, out = run(
        "escalations",
        "approve",
        escalation_id,
        "--args",
        '{"order_id": "1002", "note": "x"}',
        "--by",
        "ann",
        "--wait",
        "0",
    )
    assert code == 0, out
    (decision,) = _sent_decisions(cli)
    assert decision["arguments"] == {"order_id": "1002", "note": "x"}
    assert decision["by"] == "ann"


def _sent_decisions(rt: Runtime) -> list[dict[str, object]]:
    found = []
    for raw in rt.store.client.lrange("tether.escalations", 0, -1):
        _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        if "decision" in kwargs:
            found.append(kwargs["decision"])
    return found


def test_threads_forget_prints_keys_without_emoji(cli: Runtime) -> None:
    cli.store.client.rpush(keys.thread_turns("ana2"), "{}")
    code, out = run("threads", "forget", "ana2")
    assert code == 0, out
    assert "tether:thread:{ana2}:turns" in out


def test_dead_letter_reason_names_the_field_and_replay_is_refused(cli: Runtime) -> None:
    kwargs = {"action": {"run_id": "run_x", "tool": "add"}}
    assert parse(ToolAction, kwargs["action"], "tether.tools", kwargs) is None
    (letter,) = deadletters.list_dead(cli, 5)
    assert "action_id: Field required" in letter.reason
    assert "step: Field required" in letter.reason
    code, out = run("dead", "replay", letter.id)
    assert code == 2 and "would only fail again" in out
    assert len(deadletters.list_dead(cli, 5)) == 1  # no new letter
    assert cli.store.client.llen("tether.tools") == 0


def test_dead_delete_removes_the_letter(cli: Runtime) -> None:
    deadletters.record(cli, "tether.step", {"run_id": "r"}, "boom", ErrorCategory.internal)
    (letter,) = deadletters.list_dead(cli, 5)
    code, out = run("dead", "delete", letter.id)
    assert code == 0, out
    assert deadletters.list_dead(cli, 5) == []
    code, out = run("dead", "list")
    assert "no dead letters in Redis at" in out


def test_empty_reads_say_which_redis_they_read(cli: Runtime, redis_url: str) -> None:
    for argv in (["runs", "list"], ["escalations", "list"], ["threads", "list"]):
        code, out = run(*argv)
        assert code == 0
        assert redis_url in out, argv
    for argv in (["escalations", "show", "esc_nope"], ["dead", "show", "1-1"]):
        code, out = run(*argv)
        assert code == 2
        assert redis_url in out, argv


def test_dev_env_is_read_under_the_environment(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dev.env"  # type: ignore[operator]
    connection.write_dev_env(
        {"TETHER_REDIS_URL": "redis://127.0.0.1:6399/0", "TETHER_AGENT_MODULES": '["a.b"]'}, path
    )
    monkeypatch.delenv("TETHER_REDIS_URL", raising=False)
    monkeypatch.setenv("TETHER_AGENT_MODULES", '["mine"]')
    connection.load_dev_env(path)
    import os

    assert os.environ["TETHER_REDIS_URL"] == "redis://127.0.0.1:6399/0"
    assert os.environ["TETHER_AGENT_MODULES"] == '["mine"]'


def test_redis_client_of_the_cli_does_not_retry(cli: Runtime) -> None:
    rt = connection.runtime()
    client = rt.store.client
    assert isinstance(client, redis.Redis)
    assert client.get_retry() is not None
    assert client.get_retry()._retries == 0  # type: ignore[union-attr]


def test_unreachable_redis_from_the_command_line_is_one_line_exit_2(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TETHER_REDIS_URL": "redis://127.0.0.1:1/0"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "runs", "list"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert time.monotonic() - started < 10  # interpreter start included; the wait is < 3 s
    assert done.returncode == 2
    assert done.stderr == ""
    (line,) = done.stdout.strip().splitlines()  # one line, no traceback
    assert line.startswith("error: cannot use Redis at redis://127.0.0.1:1/0: unreachable")


def test_stats_leaves_out_eval_runs_unless_asked(cli: Runtime) -> None:
    now = datetime.now(UTC)
    make_run(cli.store, "a", created=now, agent="calc")
    make_run(cli.store, "b", created=now, agent="eval:calc")
    code, out = run("stats", "--json")
    assert code == 0, out
    assert json.loads(out)["runs"]["total"] == 1
    code, out = run("stats", "--json", "--include-eval")
    assert json.loads(out)["runs"]["total"] == 2
    code, out = run("stats", "--json", "--agent", "eval:calc")
    assert json.loads(out)["runs"]["total"] == 1


def test_top_json_prints_one_snapshot(cli: Runtime) -> None:
    code, out = run("top", "--json")
    assert code == 0, out
    assert "queues" in json.loads(out)
