"""The CLI as an operator uses it: `tether dev` in one process, `tether submit` in another."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from tests.processes import tether_cli as _tether
from tether import client
from tether.config import Settings
from tether.dev.redis_server import free_port
from tether.dev.stack import DevStack
from tether.runtime import Runtime


def _tether_in(folder: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` run from ``folder``, where `tether dev` wrote .tether/dev.env."""
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.main", *args],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_submit_from_another_process_against_tether_dev(tmp_path: Path) -> None:
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=os.getcwd(),
        COLUMNS="200",
        LEDGER_DIR=str(tmp_path),
        SUPPORT_DESK_DB=str(tmp_path / "support.sqlite3"),
    )
    env.pop("TETHER_REDIS_URL", None)
    env.pop("TETHER_AGENT_MODULES", None)
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli.main",
            "dev",
            "--agents",
            "tests.agents",
            "--agents",
            "examples.support_desk.agent",
            "--concurrency",
            "1",
            "--redis-port",
            str(port),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = dev.stdout.readline() if dev.stdout else ""
            if not line and dev.poll() is not None:
                break
            lines.append(line)
            match = re.search(r"export TETHER_REDIS_URL=(\S+)", line)
            url = match.group(1) if match else None
        assert url == f"redis://127.0.0.1:{port}/0", "".join(lines)
        # No TETHER_REDIS_URL or TETHER_AGENT_MODULES here: commands run from the folder
        # of `tether dev` read what it wrote to .tether/dev.env.
        written = (tmp_path / ".tether" / "dev.env").read_text()
        assert f"TETHER_REDIS_URL={url}" in written and "TETHER_AGENT_MODULES" in written

        def _tether(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return _tether_in(tmp_path, *args, env=env)

        client_env = env
        unknown_agent = _tether("submit", "nosuchagent", "hello", env=client_env)
        assert unknown_agent.returncode == 2
        assert "calculator" in unknown_agent.stdout + unknown_agent.stderr  # the known agents

        submitted = _tether("submit", "calculator", "What is 2 + 3?", "--wait", env=client_env)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "succeeded" in submitted.stdout and "2 + 3 = 5" in submitted.stdout
        match = re.search(r"submitted event (\w+): run (run_\w+)", submitted.stdout)
        assert match is not None, submitted.stdout
        run_id = match.group(2)
        assert client.rejection(match.group(1), runtime=Runtime(Settings(redis_url=url))) is None

        shown = _tether("runs", "show", run_id, env=client_env)
        assert "succeeded" in shown.stdout
        traced = _tether("runs", "trace", run_id, env=client_env)
        assert "model_call" in traced.stdout and "tool_call" in traced.stdout
        listed = _tether("runs", "list", env=client_env)
        assert run_id in listed.stdout

        paying = _tether("submit", "payer", "Pay acme", env=client_env)
        pay_run = re.search(r"run (run_\w+)", paying.stdout).group(1)  # type: ignore[union-attr]
        escalation_id = f"esc_{pay_run}_0_0"
        deadline = time.monotonic() + 20
        while escalation_id not in _tether("escalations", "list", env=client_env).stdout:
            assert time.monotonic() < deadline, "the escalation never showed up"
            time.sleep(0.3)
        decided = _tether(
            "escalations",
            "reject",
            escalation_id,
            "--reason",
            "not today",
            "--by",
            "qa",
            env=client_env,
        )
        assert decided.returncode == 0, decided.stdout + decided.stderr
        deadline = time.monotonic() + 20
        while "rejected" not in _tether("runs", "show", pay_run, env=client_env).stdout:
            assert time.monotonic() < deadline, "the run never ended rejected"
            time.sleep(0.3)
        again = _tether("escalations", "approve", escalation_id, "--by", "qa", env=client_env)
        assert again.returncode == 2 and "already decided" in again.stdout
        unknown = _tether("runs", "show", "run_nope", env=client_env)
        assert unknown.returncode == 2 and f"no run run_nope in Redis at {url}" in unknown.stdout

        dev.send_signal(signal.SIGINT)
        out, _ = dev.communicate(timeout=30)
        assert dev.returncode == 0, out
        assert "stopped" in out
        assert not (tmp_path / ".tether" / "dev.env").exists()
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            raise AssertionError("tether dev left its redis-server running")
        except redis.ConnectionError:
            pass
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()


def _client_env(stack: DevStack) -> dict[str, str]:
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, COLUMNS="200", TETHER_REDIS_URL=stack.redis_url)


def test_submit_wait_ends_at_once_when_the_event_is_rejected(stack: DevStack) -> None:
    started = time.monotonic()
    submitted = _tether(
        "submit", "no_such_agent", "hi", "--wait", "--timeout", "60", env=_client_env(stack)
    )
    took = time.monotonic() - started

    out = " ".join((submitted.stdout + submitted.stderr).split())  # rich wraps long lines
    assert submitted.returncode == 2, submitted.stdout + submitted.stderr
    assert "was rejected and never became a run" in out, out
    assert "agent 'no_such_agent' is not registered" in out, out
    assert "Traceback" not in submitted.stdout + submitted.stderr
    assert took < 20, f"--wait took {took:.1f}s to notice the rejection"


def test_runs_rejected_cuts_a_large_payload(stack: DevStack, stack_runtime: Runtime) -> None:
    event_id = f"huge-{uuid.uuid4().hex}"
    client.submit("calculator", "x" * 400_000, event_id=event_id, runtime=stack_runtime)
    deadline = time.monotonic() + 20
    while client.rejection(event_id, runtime=stack_runtime) is None:
        assert time.monotonic() < deadline, "the oversized event was never rejected"
        time.sleep(0.1)

    shown = _tether("runs", "rejected", "--limit", "1", env=_client_env(stack))

    assert shown.returncode == 0, shown.stdout + shown.stderr
    out = " ".join(shown.stdout.split())
    assert event_id in out and "over the 262144-byte cap" in out, out
    assert "payload cut to 200 of" in out, out
    assert len(shown.stdout) < 1_000, f"printed {len(shown.stdout)} chars for one rejection"


def test_replay_from_the_command_line_with_the_dev_env(
    stack: DevStack, stack_runtime: Runtime, tmp_path: Path
) -> None:
    """`tether replay` in its own process, its settings from .tether/dev.env: the agent
    modules load there, and replay's copy of the agent does not meet the original when
    intake looks for shadow candidates ("two different agents are named ...")."""
    run_id = client.submit("calculator", "What is 2 + 3?", runtime=stack_runtime)
    assert client.wait(run_id, runtime=stack_runtime, timeout_s=60).status == "succeeded"
    (tmp_path / ".tether").mkdir()
    (tmp_path / ".tether" / "dev.env").write_text(
        f"export TETHER_REDIS_URL={stack.redis_url}\n"
        "export TETHER_AGENT_MODULES='[\"tests.agents\"]'\n"
    )
    env = {**_client_env(stack), "COLUMNS": "200"}
    env.pop("TETHER_REDIS_URL")
    env.pop("TETHER_AGENT_MODULES", None)

    replayed = _tether_in(tmp_path, "replay", run_id, "--scratch-db", "13", env=env)

    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "no divergence" in replayed.stdout
