"""The docs say what the code does: generated references match, every example is a tested file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from docs import gen_reference
from tests.unit.test_deploy_manifests import CliRefused, _parse_tether
from tether.config import Settings
from tether.store import keys

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^"]+)"$')


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _blocks(path: Path) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


@pytest.mark.parametrize("path", sorted(gen_reference.pages()), ids=lambda p: p.name)
def test_the_generated_references_match_the_code(path: Path) -> None:
    assert path.read_text() == gen_reference.pages()[path], (
        f"{path.relative_to(ROOT)} is out of date: run `python docs/gen_reference.py`"
    )


def test_a_stale_redis_keys_page_fails_and_its_prose_is_kept() -> None:
    page = (DOCS / "reference" / "redis-keys.md").read_text()
    row = "| `tether:runs` | sorted set | run ids by creation time. |"
    assert row in page
    stale = page.replace(row, "| `tether:runs` | list | runs. |").replace(
        "# Redis keys\n", "# Redis keys\n\nProse written by hand.\n"
    )
    regenerated = gen_reference.redis_keys_reference(stale)
    assert regenerated != stale
    assert row in regenerated and "Prose written by hand." in regenerated


def test_the_redis_keys_page_names_every_key_with_its_type() -> None:
    page = gen_reference.redis_keys_reference()
    constants = {
        name: value
        for name, value in vars(keys).items()
        if name.isupper() and isinstance(value, str) and value.startswith(f"{keys.PREFIX}:")
    }
    assert len(constants) > 15
    for name, value in constants.items():
        assert f"| `{value}` |" in page, f"keys.{name} is missing from the Redis keys page"
    for pattern in (
        "tether:run:{<run_id>}",
        "tether:action:{<run_id>}:<step>:<n>:inflight",
        "tether:escalation:esc_{<run_id>}_<...>",
        "tether:spilled:{<slot>}:<write_id>",
        "tether:thread:{<thread_id>}:queue",
    ):
        assert f"| `{pattern}` |" in page
    assert "| `tether:run:{<run_id>}:log` | stream |" in page


def test_a_key_without_its_type_in_its_doc_is_refused() -> None:
    with pytest.raises(ValueError, match=r"keys\.RUN_INDEX's doc must start with its Redis type"):
        gen_reference.KeyEntry("Runs", "RUN_INDEX", keys.RUN_INDEX, "run ids by creation time")
    with pytest.raises(ValueError, match=r"keys\.run's doc"):
        gen_reference.KeyEntry("Runs", "run", keys.run("run_x"), "")


def test_every_setting_has_a_description() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not missing, f"settings without description=: {missing}"


def test_the_settings_reference_names_every_variable() -> None:
    page = gen_reference.settings_reference()
    for name in Settings.model_fields:
        assert f"`TETHER_{name.upper()}`" in page


def test_every_python_example_is_an_included_file_that_exists() -> None:
    included: set[Path] = set()
    for page in _pages():
        for language, body in _blocks(page):
            if language not in ("python", "py"):
                continue
            lines = body.strip().splitlines()
            found = [SNIPPET.match(line.strip()) for line in lines]
            assert lines and all(found), (
                f"{page.relative_to(ROOT)} has a Python block written inline; put it in "
                f"docs/examples/ and include it with --8<--, so that a test runs it:\n{body}"
            )
            for match in found:
                assert match is not None
                target = ROOT / match.group(1)
                assert target.is_file(), f"{page.relative_to(ROOT)} includes {target}: missing"
                included.add(target)
    examples = {p for p in (DOCS / "examples").glob("*.py") if p.name != "__init__.py"}
    # short_agent.py is the README's agent (test_the_readme_agent_is_the_tested_example).
    assert examples - included <= {DOCS / "examples" / "short_agent.py"}


def _tether_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    # The CLI reference shows usage lines ([OPTIONS] COMMAND...), not commands to type.
    pages = [p for p in _pages() if p != DOCS / "reference" / "cli.md"]
    for page in [*pages, ROOT / "README.md"]:
        for language, body in _blocks(page):
            if language not in ("sh", "bash", "console", "shell"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                command = line.split("#", 1)[0].strip().removeprefix("$ ")
                for part in re.split(r"\s*(?:&&|&|;|\|)\s*", command):
                    if part.startswith("tether "):
                        found.append((f"{page.relative_to(ROOT)}: {part}", shlex.split(part)))
    return found


def test_every_tether_command_in_the_docs_is_one_the_cli_accepts() -> None:
    commands = _tether_commands()
    assert len(commands) > 10
    refused = []
    for where, argv in commands:
        # Placeholders stand for values: ESC_ID, run_..., [--agent A]...
        argv = [a for a in argv if not (a.startswith("[") or a.endswith("]"))]
        try:
            _parse_tether(argv)
        except (CliRefused, AssertionError) as exc:
            refused.append(f"{where}: {exc}")
    assert not refused, "\n".join(refused)


def test_the_readme_is_short_and_its_agent_is_the_tested_example() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) < 200
    python = [body for language, body in _blocks(readme) if language == "python"]
    assert python == [(DOCS / "examples" / "short_agent.py").read_text()], (
        "the README's agent is docs/examples/short_agent.py, which a test runs: edit both"
    )


def test_the_docs_home_includes_the_readme_intro() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- --8<-- [start:intro] -->", "<!-- --8<-- [end:intro] -->"
    assert readme.index(start) < readme.index(end)
    # Included into docs/index.md, the intro must not link relative to the README.
    intro = readme[readme.index(start) : readme.index(end)]
    assert "](" not in intro
    assert '--8<-- "README.md:intro"' in (DOCS / "index.md").read_text()
