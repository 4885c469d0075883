"""docker-compose.yml and the image checked against their schemas and against the code.

No network and no container engine: the compose specification's JSON schema is
vendored in tests/schemas (see its README). deploy/k8s is rendered and checked
in tests/unit/test_deploy_k8s.py. Every `tether ...` command
named in a file is parsed by the real CLI, and every TETHER_* variable is
checked against the Settings fields, so a renamed option or setting fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml

from tether.cli.main import app
from tether.config import Settings
from tether.dev.stack import SERVICES

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "tests" / "schemas"
COMPOSE = ROOT / "docker-compose.yml"
EXAMPLE_ENV = ROOT / "deploy" / "config" / "example.env"


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


# --- schemas -----------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []


def test_compose_schema_check_catches_a_misspelt_key() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    broken = _compose()
    broken["services"]["planner"]["healtcheck"] = broken["services"]["planner"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft201909Validator)


# --- commands and settings against the code ----------------------------------


# Typer carries its own click; its usage errors derive from this.
CliRefused = typer.TyperException


def _parse_tether(argv: list[str]) -> None:
    """Parse ``argv`` with the real `tether` CLI (no command runs); raise if it is refused."""
    assert argv[0] == "tether", argv
    command: Any = typer.main.get_command(app)
    ctx = command.make_context("tether", list(argv[1:]))
    while hasattr(command, "resolve_command"):
        protected = getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", [])
        name, sub, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        assert sub is not None and name is not None, argv
        command = sub
        ctx = command.make_context(name, rest, parent=ctx)
    if ctx.info_name in ("worker", "health"):
        assert ctx.params["service"] in SERVICES, argv


def _commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for name, service in _compose()["services"].items():
        if "command" in service:
            found.append((f"compose {name}", service["command"]))
        test = service.get("healthcheck", {}).get("test")
        if test and test[0] == "CMD":
            found.append((f"compose {name} healthcheck", test[1:]))
    return found


def test_every_command_is_one_the_code_accepts() -> None:
    commands = _commands()
    assert any(argv[:2] == ["tether", "worker"] for _, argv in commands)
    from celery.bin.celery import celery

    for where, argv in commands:
        if argv[0] == "tether":
            try:
                _parse_tether(argv)
            except CliRefused as exc:
                pytest.fail(f"{where}: {argv} is refused by the CLI: {exc}")
        elif argv[0] == "celery":
            assert argv[1] in celery.commands, f"{where}: no `celery {argv[1]}`"
        elif argv[0] in ("python", "sh", "redis-cli"):
            continue
        else:
            pytest.fail(f"{where}: unexpected program {argv[0]}")


def test_the_command_check_catches_an_unknown_option_or_service() -> None:
    with pytest.raises(CliRefused):
        _parse_tether(["tether", "worker", "planner", "--concurency", "2"])
    with pytest.raises(AssertionError):
        _parse_tether(["tether", "health", "planer"])


def _setting_names() -> set[str]:
    names: set[str] = set()
    for field, info in Settings.model_fields.items():
        names.add(f"TETHER_{field.upper()}")
        alias = info.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(str(choice) for choice in alias.choices)
    return names


def _named_variables() -> dict[str, str]:
    """Every TETHER_* variable the deploy files set, with where."""
    named: dict[str, str] = {}
    compose = _compose()
    for name, service in compose["services"].items():
        for key in service.get("environment", {}):
            named.setdefault(key, f"compose {name}")
    for line in EXAMPLE_ENV.read_text().splitlines():
        match = re.match(r"#?\s*(TETHER_[A-Z0-9_]+)=", line)
        if match:
            named.setdefault(match.group(1), "example.env")
    return {key: where for key, where in named.items() if key.startswith("TETHER_")}


def test_every_setting_named_is_one_the_code_reads() -> None:
    known = _setting_names()
    unknown = {key: where for key, where in _named_variables().items() if key not in known}
    assert unknown == {}


def _env_values(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> Settings:
    for key in list(_setting_names()):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        # Compose interpolation and Kubernetes' $(VAR) expansion, with a stand-in.
        value = re.sub(r"\$\{[^}]*\}|\$\([A-Z_]+\)", "x", value)
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_example_env_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    example: dict[str, str] = {}
    for line in EXAMPLE_ENV.read_text().splitlines():
        if line.startswith("TETHER_"):
            key, value = line.split("=", 1)
            example[key] = value.strip("'")
    _env_values(monkeypatch, example)
    _env_values(monkeypatch, _compose()["x-tether"]["environment"])


# --- what compose must hold --------------------------------------------------


def _seconds(text: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    assert match, text
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_compose_redis_is_durable_refuses_eviction_and_needs_a_password() -> None:
    redis = _compose()["services"]["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert "--aclfile /tmp/users.acl" in command
    assert "./deploy/redis/users.acl:/etc/redis/users.acl:ro" in redis["volumes"]
    for user in ACL_USERS:
        variable = f"REDIS_{user.upper()}_PASSWORD"
        assert f"${{{variable}:?" in redis["environment"][variable]
    assert "ports" not in redis


ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
ACL_USERS = ("planner", "executor", "escalation", "operator", "flower", "monitor")


def _acl_users() -> dict[str, str]:
    """User name -> its rule, from deploy/redis/users.acl."""
    rules = {}
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("user "):
            name, rule = line[len("user ") :].split(" ", 1)
            rules[name] = rule
    return rules


def test_the_acl_has_a_user_per_service_and_no_catch_all() -> None:
    rules = _acl_users()
    assert rules.pop("default") == "off"
    assert set(rules) == set(ACL_USERS)
    for name, rule in rules.items():
        words = rule.split()
        assert words[:2] == ["on", f">${{REDIS_{name.upper()}_PASSWORD}}"], name
        assert "-@all" in words and "resetkeys" in words and "resetchannels" in words, name
        assert not {"~*", "&*", "allkeys", "allchannels", "allcommands", "+@all"} & set(words)
        assert not [w for w in words if w.startswith("+@")], f"{name} is granted a category"
        for command in ("flushall", "flushdb", "keys", "config", "debug", "acl", "shutdown"):
            assert f"+{command}" not in words, (name, command)


def test_each_service_logs_in_to_redis_as_its_own_user() -> None:
    compose = _compose()
    for name in SERVICES:
        url = compose["services"][name]["environment"]["TETHER_REDIS_URL"]
        assert url.startswith(f"redis://{name}:${{REDIS_{name.upper()}_PASSWORD:?"), url
    flower = compose["services"]["flower"]["environment"]["CELERY_BROKER_URL"]
    assert flower.startswith("redis://flower:")


def test_compose_services_are_healthchecked_scalable_and_loopback_only() -> None:
    compose = _compose()
    limit = int(compose["x-tether"]["environment"]["TETHER_TASK_TIME_LIMIT_S"])
    for name in SERVICES:
        service = compose["services"][name]
        assert service["command"] == ["tether", "worker", name]
        # The worker's own /readyz on its metrics port, not a Python process importing Celery.
        port = service["environment"]["TETHER_METRICS_PORT"]
        probe = f"urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=5)"
        assert service["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
        assert probe in service["healthcheck"]["test"][3], name
        # --scale needs neither a fixed container name nor a published port.
        assert "container_name" not in service and "ports" not in service
        assert _seconds(service["stop_grace_period"]) > limit
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith(("127.0.0.1:", "${FLOWER_BIND:-127.0.0.1}:")), (name, port)
    flower = compose["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in flower["environment"]
    assert ":?" in flower["environment"]["FLOWER_BASIC_AUTH"]


# --- the image ---------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_image_installs_every_dependency_from_the_hashed_lock() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = (ROOT / "deploy" / "requirements.lock").read_text()
    pinned = {
        _canonical(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", lock, re.M)
    }
    for requirement in project["dependencies"]:
        name = _canonical(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])
        assert name in pinned, f"{name} is not in deploy/requirements.lock: regenerate it"
    # Every pin carries a hash (pip refuses the whole file otherwise).
    assert lock.count("--hash=sha256:") >= len(pinned)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "--require-hashes -r deploy/requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    assert re.search(r"^USER 10001$", dockerfile, re.M)
    assert dockerfile.count("\nFROM ") + dockerfile.startswith("FROM ") >= 2


def test_health_knows_the_same_services_as_the_workers() -> None:
    from tether.worker import health

    assert health.SERVICES == SERVICES
