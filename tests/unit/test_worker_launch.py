"""A gevent worker's kombu sleeps cooperatively: gevent is patched before Celery loads.

Patched the way ``celery -P gevent`` patches, kombu keeps the OS's blocking
``time.sleep``, and its reconnect loop then freezes every greenlet (the /readyz
probe included) while the broker is away. Each check runs in a child Python:
monkey-patching lasts for the life of a process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from tether.cli.main import app
from tether.config import get_settings
from tether.worker.launch import pool_of

# What celery/__main__.py does before it runs a worker: patch, then import its command.
CELERY_MAIN = """
import sys
from celery import maybe_patch_concurrency
maybe_patch_concurrency(ARGV)
from celery.bin.celery import main
import gevent, kombu.utils.functional
print("cooperative" if kombu.utils.functional.sleep is gevent.sleep else "blocking")
"""
ARGV = ["celery", "-A", "tether.planner.worker", "worker", "--pool", "gevent"]


def _kombu_sleep(prelude: str) -> str:
    script = textwrap.dedent(prelude) + CELERY_MAIN.replace("ARGV", repr(ARGV))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_patched_as_celery_patches_kombu_keeps_the_blocking_sleep() -> None:
    # The upstream trap the launcher exists for; if this ever reads "cooperative",
    # the launcher can go.
    assert _kombu_sleep("") == "blocking"


def test_patched_by_the_launcher_kombu_sleeps_cooperatively() -> None:
    prelude = f"""
    from tether.worker.launch import patch_for
    patch_for({ARGV!r})
    """
    assert _kombu_sleep(prelude) == "cooperative"


def test_the_launcher_leaves_other_pools_unpatched() -> None:
    script = """
    from tether.worker.launch import patch_for
    patch_for(["celery", "worker", "--pool", "prefork"])
    import time
    from gevent import monkey
    print(monkey.is_module_patched("time"))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(
    ("argv", "pool"),
    [
        (["celery", "worker", "--pool", "gevent"], "gevent"),
        (["celery", "worker", "-P", "solo"], "solo"),
        (["celery", "worker", "--pool=threads"], "threads"),
        (["celery", "worker"], None),
        (["celery", "worker", "--pool"], None),
    ],
)
def test_the_pool_is_read_from_the_command_line(argv: list[str], pool: str | None) -> None:
    assert pool_of(argv) == pool


def test_tether_worker_runs_celery_through_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr("os.execv", lambda _path, argv: ran.append(argv))
    monkeypatch.setenv("TETHER_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("TETHER_PLANNER_POOL", "gevent")
    monkeypatch.delenv("TETHER_METRICS_PORT", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["worker", "planner"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    [argv] = ran
    assert argv[1:3] == ["-m", "tether.worker.launch"]
    assert pool_of(argv) == "gevent"
