"""The CLI's surface: fast help (nothing heavy imported), --version, help without sentinels."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from tether.cli.main import app

HEAVY = (
    "sentry_sdk",
    "redis",
    "redis.asyncio",
    "celery",
    "fastapi",
    "tether.escalation.webhooks",
    "tether.runtime",
    "tether.store.state",
)


def _imported_by(argv: list[str]) -> list[str]:
    """The HEAVY modules a fresh interpreter has imported after running `tether ARGV`."""
    code = (
        "import json, sys\n"
        "from tether.cli.main import app\n"
        f"sys.argv = ['tether', *{argv!r}]\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_help_imports_no_redis_celery_sentry_or_webhooks() -> None:
    assert _imported_by(["--help"]) == []
    assert _imported_by(["runs", "list", "--help"]) == []
    assert _imported_by(["escalations", "approve", "--help"]) == []


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"tether {version('tether')}"


def test_no_sentinel_defaults_in_help() -> None:
    result = CliRunner().invoke(app, ["submit", "--help"])
    assert result.exit_code == 0
    assert "default: -1" not in result.output
    assert "default: 0.0" not in result.output
    assert "--meta" in result.output


def test_by_is_the_person_on_every_decision_and_extend_takes_amount() -> None:
    for command in ("approve", "reject", "answer", "extend"):
        shown = CliRunner().invoke(app, ["escalations", command, "--help"], terminal_width=200)
        by_line = next(line for line in shown.output.splitlines() if "--by " in line)
        assert "Who decides" in by_line
    extend = CliRunner().invoke(app, ["escalations", "extend", "--help"], terminal_width=200)
    assert "--amount" in extend.output
    assert "--by-who" not in extend.output


def test_replay_default_scratch_db_agrees_with_the_library() -> None:
    from tether.cli import replay as cli_replay
    from tether.evaluation import replay

    assert cli_replay.DEFAULT_SCRATCH_DB == replay.DEFAULT_SCRATCH_DB
