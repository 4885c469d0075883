"""Settings that contradict each other are refused at start-up, naming what to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether import operators
from tether.config import Settings
from tether.errors import ConfigError


def test_the_defaults_are_consistent_even_with_a_model_endpoint() -> None:
    settings = Settings(model_base_url="http://127.0.0.1:9/v1")
    assert settings.model_retry_schedule_s < settings.task_soft_time_limit_s


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"visibility_timeout_s": 180}, "TETHER_VISIBILITY_TIMEOUT_S (180) is not above"),
        ({"task_time_limit_s": 120}, "TETHER_TASK_TIME_LIMIT_S (120) is not above"),
        ({"run_stalled_after_s": 100}, "TETHER_RUN_STALLED_AFTER_S (100) is not above"),
        (
            {"model_base_url": "http://127.0.0.1:9/v1", "model_timeout_s": 60},
            "TETHER_MODEL_MAX_ATTEMPTS (3) x TETHER_MODEL_TIMEOUT_S (60) plus "
            "2 x TETHER_MODEL_RETRY_WAIT_MAX_S (10) = 200 s, does not fit in "
            "TETHER_TASK_SOFT_TIME_LIMIT_S (120)",
        ),
    ],
)
def test_a_contradiction_is_refused_naming_the_variables(
    overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as refused:
        Settings(**overrides)
    assert named in str(refused.value)


def test_every_contradiction_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings(visibility_timeout_s=60, task_time_limit_s=100, run_stalled_after_s=90)
    message = str(refused.value)
    for variable in (
        "TETHER_VISIBILITY_TIMEOUT_S",
        "TETHER_TASK_SOFT_TIME_LIMIT_S",
        "TETHER_RUN_STALLED_AFTER_S",
    ):
        assert variable in message


def test_the_model_schedule_is_not_checked_without_an_endpoint() -> None:
    # Without TETHER_MODEL_BASE_URL agents get the scripted model, which never retries.
    Settings(model_timeout_s=600)


def test_the_cli_reports_bad_settings_in_one_line_and_exits_2() -> None:
    env = dict(os.environ, TETHER_TASK_TIME_LIMIT_S="100", COLUMNS="300")
    for command in (["runs", "list"], ["worker", "planner"], ["dev"]):
        done = subprocess.run(
            [sys.executable, "-m", "tether.cli.main", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "TETHER_TASK_TIME_LIMIT_S (100) is not above" in done.stdout, command
        assert "Traceback" not in done.stdout + done.stderr, command


def test_the_escalation_service_refuses_to_start_on_an_unusable_operators_file(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "operators.json"
    broken.write_text('{"operators": [{"name": "alice"}]}')
    env = dict(os.environ, TETHER_OPERATORS_FILE=str(broken), COLUMNS="300")
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "worker", "escalation"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"TETHER_OPERATORS_FILE {str(broken)!r} is unreadable" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # Read for each decision, it may change while the service runs; a good one passes.
    broken.write_text(json.dumps({"operators": [{"name": "alice", "key_sha256": "ab" * 32}]}))
    operators.check(Settings(operators_file=str(broken)))
