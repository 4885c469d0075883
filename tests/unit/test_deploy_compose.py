"""docker-compose.yml as a team runs it, checked file by file without a container engine.

Every file it mounts exists, every variable it reads is in
deploy/config/compose.env.example or has a default, published ports are distinct
and on loopback, Redis runs as its own user and fsyncs every write, the
operators file is a secret only the services that check decisions read, secrets
stay out of the build context, and the operator commands the docs give parse
with the real CLI and need no password from the shell. Its observability stack:
test_deploy_compose_observability.py.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.test_deploy_manifests import CliRefused, _parse_tether
from tether.api import publishers
from tether.config import Settings
from tether.dev.stack import SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "config" / "compose.env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DEPLOYING = ROOT / "docs" / "guides" / "deploying.md"
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME; $$ is a $.
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_]\w*)(?P<op>:?[-?])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_]\w*))"
)


# compose, as compose reads it -------------------------------------------------------


def example_env() -> tuple[dict[str, str], set[str]]:
    """The variables compose.env.example sets, and those it documents commented out."""
    required: dict[str, str] = {}
    optional: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        if found := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            required[found[1]] = found[2]
        elif found := re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=.*", line):
            optional.add(found[1])
    return required, optional


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` with compose's interpolation done against ``env``; KeyError for a required one."""

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"] or "", match["arg"] or ""
        value = env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if unset and op.endswith("-"):
            return arg
        if unset and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return value or ""

    return VARIABLE.sub(one, text)


def rendered(source: str | None = None) -> dict[str, Any]:
    """docker-compose.yml with the example's values (a stand-in for each password left empty)."""
    values, _ = example_env()
    env = {name: value or f"example-{name.lower()}" for name, value in values.items()}
    loaded: dict[str, Any] = yaml.safe_load(interpolate(source or COMPOSE.read_text(), env))
    return loaded


def tether_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the Tether image."""
    return {n: s for n, s in compose["services"].items() if s.get("image") == "tether:dev"}


def mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path -> host path of each bind mount (short syntax) of ``service``."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = str(volume).split(":")
        if source.startswith(("./", "/")):
            found[PurePosixPath(target)] = (ROOT / source).resolve()
    return found


def host_file(service: dict[str, Any], container_path: str) -> Path | None:
    """The host file a container path of ``service`` is, through its bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in mounts(service).items():
        if path == target or target in path.parents:
            return source / path.relative_to(target)
    return None


# the compose file ------------------------------------------------------------------------


def test_the_file_with_the_example_values_matches_the_compose_specification() -> None:
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(rendered())]
    assert errors == []


def test_every_variable_is_in_the_env_example_or_has_a_default() -> None:
    required, optional = example_env()
    read = {}
    for match in VARIABLE.finditer(COMPOSE.read_text()):
        if not match["escaped"]:
            read[match["name"] or match["bare"]] = match["op"] or ""
    for name, op in read.items():
        if op.endswith("-"):
            continue
        assert name in required, f"compose needs {name}: set it in compose.env.example"
    assert set(required) | optional <= set(read), "compose.env.example names what compose ignores"
    with pytest.raises(KeyError, match="REDIS_PLANNER_PASSWORD"):
        interpolate(COMPOSE.read_text(), {})


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$SET ${SET} $SET ${EMPTY:-d} ${EMPTY-d} ${NONE-d}", env) == "$SET v v d  d"
    with pytest.raises(KeyError, match="NONE: say so"):
        interpolate("${NONE:?say so}", env)
    with pytest.raises(KeyError):
        interpolate("${EMPTY:?}", env)


def test_every_mounted_file_exists() -> None:
    compose = rendered()
    for name, service in compose["services"].items():
        for target, source in mounts(service).items():
            assert source.exists(), f"{name} mounts {source}, which is not in the repository"
            assert source.is_file() == bool(target.suffix), f"{name}: {source} -> {target}"
    _, optional = example_env()
    for name, secret in yaml.safe_load(COMPOSE.read_text()).get("secrets", {}).items():
        (reference,) = VARIABLE.finditer(secret["file"])
        if reference["op"] == ":?":  # the team's own file, named in compose.env.example
            continue
        assert reference["name"] in optional, name
        assert (ROOT / reference["arg"]).is_file(), f"secret {name}'s default file is missing"


def test_published_ports_are_distinct_on_loopback_and_none_is_internal() -> None:
    compose = rendered()
    published: dict[tuple[str, int], str] = {}
    for name, service in compose["services"].items():
        internal = {int(service.get("environment", {}).get("TETHER_METRICS_PORT", 0))}
        for port in service.get("ports", []):
            address, host, container = str(port).split(":")
            assert address == "127.0.0.1", (name, port)
            assert (address, int(host)) not in published, (
                f"{name} and {published[address, int(host)]}"
            )
            published[address, int(host)] = name
            assert int(container) not in internal | {6379, 4318}, (name, port)
    assert set(published.values()) == {"flower", "console", "prometheus", "grafana", "jaeger"}


def test_every_tether_service_environment_is_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, service in tether_services(rendered()).items():
        for key in [k for k in Settings.model_fields]:
            monkeypatch.delenv(f"TETHER_{key.upper()}", raising=False)
        for key, value in service["environment"].items():
            monkeypatch.setenv(key, str(value))
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        if name in SERVICES:
            assert settings.metrics_port is not None, name


# Redis -----------------------------------------------------------------------------------


def test_redis_runs_as_its_own_user() -> None:
    redis = rendered()["services"]["redis"]
    # The image's entrypoint switches to the redis user only for a bare `redis-server`.
    drops_root = redis["command"][0] == "redis-server" and "user" not in redis
    assert drops_root or str(redis.get("user", "root")).split(":")[0] not in ("root", "0", "")


def test_redis_fsyncs_every_write_before_acknowledging_it() -> None:
    command = " ".join(rendered()["services"]["redis"]["command"])
    assert "--appendonly yes" in command
    assert re.findall(r"--appendfsync (\w+)", command) == ["always"]
    # The ACL file, passwords in, lives in memory, not in the container's writable layer.
    assert "/tmp" in rendered()["services"]["redis"]["tmpfs"]
    assert "--aclfile /tmp/users.acl" in command


# secrets ---------------------------------------------------------------------------------


def secret_paths(compose: dict[str, Any], variable: str, secret: str) -> dict[str, str]:
    """Service -> the value of ``variable``, checked to be where ``secret`` is mounted."""
    paths = {}
    for name, service in compose["services"].items():
        mounted = {
            s["source"]: s.get("target", s["source"]) if isinstance(s, dict) else s
            for s in service.get("secrets", [])
        }
        if variable in service.get("environment", {}):
            value = service["environment"][variable]
            assert secret in mounted, f"{name}: {variable}={value} but nothing is mounted there"
            assert value == f"/run/secrets/{mounted[secret]}", name
            paths[name] = value
        else:
            assert secret not in mounted, f"{name} mounts {secret} and does not read it"
    return paths


def test_the_operators_file_is_a_secret_only_the_deciders_read() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert set(secret_paths(compose, "TETHER_OPERATORS_FILE", "operators")) == {
        "escalation",
        "console",
    }
    source = yaml.safe_load(COMPOSE.read_text())["secrets"]["operators"]["file"]
    (reference,) = VARIABLE.finditer(source)
    assert reference["op"] == ":?", "without an operators file any --by would decide"
    assert reference["name"] in example_env()[0]


def test_the_api_keys_file_is_a_secret_and_none_by_default() -> None:
    assert set(
        secret_paths(yaml.safe_load(COMPOSE.read_text()), "TETHER_API_KEYS_FILE", "api_keys")
    ) == {"console"}
    default = ROOT / rendered()["secrets"]["api_keys"]["file"]
    assert publishers.load(str(default)) == []


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's ``patterns`` leave ``path`` out of the build context."""
    left_out = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = "".join(
            {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
            for part in re.split(r"(\*\*/|\*\*|\*|\?)", body)
        )
        parts = path.split("/")
        # A pattern that matches a folder leaves out all it holds.
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            left_out = not keep
    return left_out


def test_secrets_are_left_out_of_the_build_context_and_the_sources_are_not() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    required, _ = example_env()
    operators = PurePosixPath(required.get("TETHER_OPERATORS_JSON", "operators.json")).as_posix()
    for secret in (".env", "deploy/.env", ".env.production", operators, "api-keys.json"):
        assert ignored(secret, patterns), f"{secret} would be sent to the image build"
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M)
    sources = [s for line in copied for s in line.split()]
    assert "shared" in sources and "examples" in sources
    for source in sources:
        assert not ignored(source.strip("./"), patterns), f"the Dockerfile copies {source}"
        assert not ignored(f"{source.strip('./')}/tether/__init__.py", patterns), source


def test_the_ignore_matcher_follows_docker() -> None:
    assert ignored(".env", ["**/.env"]) and ignored("a/b/.env", ["**/.env"])
    assert not ignored("a/.env", [".env"]) and ignored("a/x.pyc", ["**/*.pyc"])
    assert ignored("bench/results/r.json", ["bench/results"])
    assert not ignored(".env.example", [".env*", "!.env.example"])
    assert not ignored("shared/x.py", ["*.py"]) and ignored("x.py", ["*.py"])


# operator commands ---------------------------------------------------------------------


def compose_section(text: str) -> str:
    found = re.search(r"^## Docker Compose\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found, "docs/guides/deploying.md has no '## Docker Compose' section"
    return found[1]


def documented_commands(text: str) -> list[list[str]]:
    """Every `docker compose ...` command in ``text`` (comment markers and continuations undone)."""
    text = re.sub(r"\\\n\s*(#\s*)?", " ", text)
    commands = []
    for line in text.splitlines():
        start = line.find("docker compose ")
        if start >= 0:
            commands.append(shlex.split(line[start:].rstrip("`"), comments=True))
    return commands


# Options of `docker compose run|exec` that take a value.
VALUED = {"-e", "--env", "-u", "--user", "-w", "--workdir", "--entrypoint", "--name", "--cap-add"}


def tether_argv(argv: list[str], compose: dict[str, Any]) -> list[str] | None:
    """The `tether` command a `docker compose run|exec` runs, or None for any other."""
    if argv[2] not in ("run", "exec"):
        return None
    rest, entrypoint = argv[3:], None
    while rest[0].startswith("-"):
        option = rest.pop(0)
        if option in VALUED:
            value = rest.pop(0)
            entrypoint = [value] if option == "--entrypoint" else entrypoint
    service, args = rest[0], rest[1:]
    assert service in compose["services"], f"{' '.join(argv)}: no service {service}"
    if argv[2] == "run":
        args = [*(entrypoint or compose["services"][service].get("entrypoint", [])), *args]
    return args if args[:1] == ["tether"] else None


def documentation() -> Iterator[tuple[str, str]]:
    """Where operator commands are shown, and the text; the compose file's comments first."""
    yield (
        "compose",
        "\n".join(line[1:] for line in COMPOSE.read_text().splitlines() if line.startswith("#")),
    )
    yield "deploying.md", compose_section(DEPLOYING.read_text())


def test_operator_commands_parse_and_need_no_password_from_the_shell() -> None:
    compose = rendered()
    for where, text in documentation():
        commands = documented_commands(text)
        run = [tether_argv(argv, compose) for argv in commands]
        for argv, tether in zip(commands, run, strict=True):
            line = " ".join(argv)
            assert "PASSWORD" not in line and "redis://" not in line, f"{where}: {line}"
            if tether:
                try:
                    _parse_tether(tether)
                except CliRefused as exc:
                    pytest.fail(f"{where}: `{line}` is refused by the CLI: {exc}")
        assert len([a for a in run if a]) >= 3, f"{where} shows no operator commands"
    operator = yaml.safe_load(COMPOSE.read_text())["services"]["operator"]
    assert operator["profiles"] == ["operator"] and operator["entrypoint"] == ["tether"]
    url = operator["environment"]["TETHER_REDIS_URL"]
    assert url.startswith("redis://operator:${REDIS_OPERATOR_PASSWORD:?")
