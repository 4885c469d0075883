"""Agent versions: declared, or a stable hash of what the model sees; recorded on every run."""

from __future__ import annotations

import subprocess
import sys

from tests.agents import add, calculator, slow_lookup
from tether import planner
from tether.agent.definition import Agent, register
from tether.models import ScriptedModel, text
from tether.runtime import Runtime
from tether.transport.wire import TaskEvent


def _agent(**overrides: object) -> Agent:
    fields: dict[str, object] = {
        "name": "versioned",
        "instructions": "Add numbers with the add tool.",
        "model": ScriptedModel([text("done")], label="versioned"),
        "tools": [add],
    }
    fields.update(overrides)
    return Agent(**fields)  # type: ignore[arg-type]


def test_undeclared_version_is_a_short_hash_that_is_stable() -> None:
    first, second = _agent(), _agent()
    assert first.version == second.version == first.content_version()
    assert len(first.version) == 12
    int(first.version, 16)  # hex


def test_the_hash_is_the_same_in_another_process() -> None:
    # Workers and the CLI are different processes: Python's hash() would differ between them.
    code = "from tests.agents import calculator; print(calculator.version)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == calculator.version


def test_version_changes_with_instructions_tools_and_model() -> None:
    base = _agent().version
    assert _agent(instructions="Add numbers, carefully.").version != base
    assert _agent(tools=[add, slow_lookup]).version != base
    assert _agent(tools=[]).version != base
    assert _agent(model=ScriptedModel([text("done")], label="other")).version != base
    # What the model does not see leaves the version alone.
    assert _agent(name="renamed", max_invalid_calls=9).version == base


def test_declared_version_wins() -> None:
    assert _agent(version="2024-06-support-v3").version == "2024-06-support-v3"
    assert _agent(version="v3", instructions="Something else").version == "v3"


def test_intake_records_the_version_on_the_run_and_in_run_started(runtime: Runtime) -> None:
    register(calculator)
    run_id = planner.start(
        runtime, TaskEvent(event_id="evt-version", agent="calculator", input="add 2 and 3")
    )
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert state.agent_version == calculator.version
    started = [e for _, e in runtime.store.log.read(run_id) if e.kind == "run_started"]
    assert [e.data["agent_version"] for e in started] == [calculator.version]


def test_states_stored_before_versions_still_parse() -> None:
    from tether.store.state import RunState

    old = '{"schema_version":1,"run_id":"run_x","event_id":"e","agent":"a","goal":"g"}'
    state = RunState.model_validate_json(old)
    assert state.agent_version == ""
    assert state.feedback == []
