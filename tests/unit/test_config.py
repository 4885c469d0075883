"""Settings that contradict each other are refused at start-up, naming what to change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import tether_at_once
from tether.config import Settings
from tether.errors import ConfigError
from tether.escalation import operators


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
    commands = (["runs", "list"], ["worker", "planner"], ["dev"])
    # Each its own process, as before, started together: each must refuse to start.
    for command, done in zip(commands, tether_at_once(commands, env=env), strict=True):
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
    assert f"TETHER_OPERATORS_FILE {str(broken)!r}" in done.stdout
    assert "Field required" in done.stdout and "key_sha256" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    # Read for each decision, it may change while the service runs; a good one passes.
    broken.write_text(json.dumps({"operators": [{"name": "alice", "key_sha256": "ab" * 32}]}))
    operators.check(Settings(operators_file=str(broken)))


# --- Redis TLS -----------------------------------------------------------------


def _tls_files(tmp_path: Path) -> dict[str, str]:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN-----\n")
    return {
        "redis_tls_ca_file": str(tmp_path / "ca.pem"),
        "redis_tls_cert_file": str(tmp_path / "client.pem"),
        "redis_tls_key_file": str(tmp_path / "client.key"),
    }


def test_the_consistency_check_writes_nothing_into_the_settings(tmp_path: Path) -> None:
    # The TLS files go into the URLs as the input is read, never by the check that runs
    # after: checking settings (model_validate, a copy) leaves their values as they are.
    files = _tls_files(tmp_path)
    unfolded = Settings.model_construct(redis_url="rediss://h:6380/0", **files)  # type: ignore[arg-type]
    unfolded._consistent()
    assert unfolded.redis_url == "rediss://h:6380/0"


def test_the_tls_files_go_into_every_rediss_url_with_verification(tmp_path: Path) -> None:
    from tether.transport.celery_app import create_app

    files = _tls_files(tmp_path)
    (tmp_path / "broker-ca.pem").write_text("-----BEGIN-----\n")
    broker_ca = tmp_path / "broker-ca.pem"
    settings = Settings(
        redis_url="rediss://planner:pw@redis:6380/0",
        broker_url=f"rediss://planner:pw@broker:6380/0?ssl_ca_certs={broker_ca}",
        **files,  # type: ignore[arg-type]
    )
    # A CA the URL names itself is kept.
    assert f"ssl_ca_certs={broker_ca}&" in str(settings.broker_url)
    assert settings.redis_url == (
        f"rediss://planner:pw@redis:6380/0?ssl_ca_certs={files['redis_tls_ca_file']}"
        f"&ssl_certfile={files['redis_tls_cert_file']}"
        f"&ssl_keyfile={files['redis_tls_key_file']}&ssl_cert_reqs=required"
    )
    broker_ca.unlink()
    with pytest.raises(ConfigError, match="TETHER_BROKER_URL: the Redis TLS CA file"):
        Settings(broker_url=settings.broker_url, redis_url=settings.redis_url)
    # Settings made again from a folded URL fold nothing twice.
    assert Settings(redis_url=settings.redis_url, **files).redis_url == settings.redis_url  # type: ignore[arg-type]

    import ssl

    app = create_app(Settings(redis_url=settings.redis_url))
    assert app.conf.broker_use_ssl == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": files["redis_tls_ca_file"],
        "ssl_certfile": files["redis_tls_cert_file"],
        "ssl_keyfile": files["redis_tls_key_file"],
    }
    assert not create_app(Settings(redis_url="redis://127.0.0.1:6379/0")).conf.broker_use_ssl


def test_a_plain_url_keeps_its_query_and_gets_no_tls() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:6379/0")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            {"redis_tls_ca_file": "/nonexistent/ca.pem"},
            "CA file (TETHER_REDIS_TLS_CA_FILE) /nonexistent/ca.pem cannot be read",
        ),
        (
            {"redis_tls_cert_file": "/nonexistent/c.pem"},
            "client certificate (TETHER_REDIS_TLS_CERT_FILE)",
        ),
        ({"redis_url": "rediss://h:6380/0?ssl_cert_reqs=none"}, "ssl_cert_reqs=none"),
        (
            {"redis_tls_key_file": "/etc/hostname"},
            "a client key (TETHER_REDIS_TLS_KEY_FILE) without",
        ),
    ],
)
def test_unusable_tls_settings_are_refused_at_start(overrides: dict[str, str], named: str) -> None:
    values = {"redis_url": "rediss://h:6380/0", **overrides}
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Settings(**values)  # type: ignore[arg-type]


def test_tls_files_with_a_plain_url_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no Redis URL is rediss://"):
        Settings(redis_url="redis://h:6379/0", **_tls_files(tmp_path))  # type: ignore[arg-type]


def test_an_unreadable_ca_file_stops_a_worker_with_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "health", "planner"],
        env={
            **os.environ,
            "TETHER_REDIS_URL": "rediss://planner:pw@127.0.0.1:9/0",
            "TETHER_REDIS_TLS_CA_FILE": str(tmp_path / "missing-ca.pem"),
            "COLUMNS": "300",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "missing-ca.pem cannot be read" in done.stdout
    assert "Traceback" not in done.stderr
