"""Tools: schemas from signatures, call validation, invocation, agents' tool lookup."""

from __future__ import annotations

import threading
import time
from datetime import date
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from tether.agent.definition import Agent
from tether.agent.tools import Tool, ToolContext, tool
from tether.errors import (
    ConfigError,
    InvalidToolCallError,
    TetherError,
    ToolDefinitionError,
    ToolTimeoutError,
)
from tether.models import ScriptedModel

CTX = ToolContext(run_id="run_1", action_id="run_1:0:0", agent="tester", step=0)


class Address(BaseModel):
    street: str
    city: str


class Receipt(BaseModel):
    total_cents: int
    paid_on: date


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(name="search_orders", idempotent=False, requires_approval=True, timeout_s=5)
def find_orders(
    customer: Annotated[str, Field(min_length=2, description="customer name")],
    limit: Annotated[int, Field(ge=1, le=50)] = 10,
    status: Literal["open", "closed"] = "open",
    tags: list[str] | None = None,
) -> list[str]:
    """Search orders.

    Returns order ids.
    """
    return [f"{customer}-{status}-{i}" for i in range(limit)] + (tags or [])


@tool
def whoami(ctx: ToolContext, greeting: str = "hi") -> str:
    """Say who is calling."""
    return f"{greeting} {ctx.run_id} {ctx.action_id} {ctx.agent} {ctx.step}"


@tool
def ship(address: Address) -> Receipt:
    """Ship to an address."""
    return Receipt(total_cents=len(address.city), paid_on=date(2024, 1, 2))


@tool
def lies_about_output() -> int:
    """Claims to return an int but does not."""
    return "not a number"  # type: ignore[return-value]


@tool
def no_doc(x: float) -> float:
    return x * 2


# building a tool -----------------------------------------------------------------


def test_tool_decorator_returns_a_tool_with_defaults() -> None:
    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.description == "Add two integers."
    assert add.idempotent is True
    assert add.requires_approval is False
    assert add.timeout_s == 30.0
    assert add.context_param is None


def test_tool_decorator_options() -> None:
    assert find_orders.name == "search_orders"
    assert find_orders.idempotent is False
    assert find_orders.requires_approval is True
    assert find_orders.timeout_s == 5
    assert find_orders.description == "Search orders.\n\nReturns order ids."


def test_description_falls_back_to_the_name() -> None:
    assert no_doc.description == "no_doc"


def test_schema_has_types_and_required_fields() -> None:
    schema = add.input_model.model_json_schema()
    assert schema["type"] == "object"
    assert schema["properties"]["a"]["type"] == "integer"
    assert schema["properties"]["b"]["type"] == "integer"
    assert sorted(schema["required"]) == ["a", "b"]
    assert schema["additionalProperties"] is False


def test_schema_carries_annotated_constraints_and_defaults() -> None:
    schema = find_orders.input_model.model_json_schema()
    props = schema["properties"]
    assert schema["required"] == ["customer"]
    assert props["customer"]["type"] == "string"
    assert props["customer"]["minLength"] == 2
    assert props["customer"]["description"] == "customer name"
    assert props["limit"]["minimum"] == 1
    assert props["limit"]["maximum"] == 50
    assert props["limit"]["default"] == 10
    assert props["status"]["enum"] == ["open", "closed"]
    assert props["status"]["default"] == "open"
    assert props["tags"]["default"] is None


def test_nested_model_parameters_appear_in_the_schema() -> None:
    schema = ship.input_model.model_json_schema()
    assert schema["required"] == ["address"]
    address_ref = schema["properties"]["address"]["$ref"]
    name = address_ref.rsplit("/", 1)[-1]
    assert set(schema["$defs"][name]["properties"]) == {"street", "city"}


def test_tool_context_is_not_part_of_the_schema() -> None:
    assert whoami.context_param == "ctx"
    schema = whoami.input_model.model_json_schema()
    assert set(schema["properties"]) == {"greeting"}
    assert "required" not in schema or "ctx" not in schema["required"]
    assert "ctx" not in whoami.openai_schema()["function"]["parameters"]["properties"]


def test_openai_schema_shape() -> None:
    schema = find_orders.openai_schema()
    assert set(schema) == {"type", "function"}
    assert schema["type"] == "function"
    function = schema["function"]
    assert set(function) == {"name", "description", "parameters"}
    assert function["name"] == "search_orders"
    assert function["description"] == find_orders.description
    assert function["parameters"]["type"] == "object"
    assert set(function["parameters"]["properties"]) == {"customer", "limit", "status", "tags"}


def test_missing_return_annotation_is_a_definition_error() -> None:
    def no_return(a: int):  # type: ignore[no-untyped-def]
        return a

    with pytest.raises(ToolDefinitionError, match=r"'no_return' has no return annotation"):
        tool(no_return)


def test_missing_parameter_hint_is_a_definition_error() -> None:
    def untyped(a, b: int) -> int:  # type: ignore[no-untyped-def]
        return b

    with pytest.raises(
        ToolDefinitionError, match=r"parameter 'a' of tool 'untyped' has no type hint"
    ):
        tool(untyped)


def test_var_args_are_a_definition_error() -> None:
    def star(*numbers: int) -> int:
        return sum(numbers)

    def kwargs(**options: str) -> str:
        return ""

    with pytest.raises(ToolDefinitionError, match="takes \\*numbers"):
        tool(star)
    with pytest.raises(ToolDefinitionError, match="takes \\*options"):
        tool(kwargs)


def test_unresolvable_hints_are_a_definition_error() -> None:
    def broken(a: NoSuchType) -> int:  # type: ignore[name-defined]  # noqa: F821
        return 1

    with pytest.raises(ToolDefinitionError, match="cannot read type hints of tool 'broken'"):
        tool(broken)


def test_definition_errors_are_tether_errors() -> None:
    assert issubclass(ToolDefinitionError, TetherError)
    assert issubclass(InvalidToolCallError, TetherError)
    assert issubclass(ToolTimeoutError, TetherError)


# validate_call -----------------------------------------------------------------


def test_validate_call_accepts_json_text_and_dicts() -> None:
    assert add.validate_call('{"a": 2, "b": 3}') == {"a": 2, "b": 3}
    assert add.validate_call({"a": 2, "b": 3}) == {"a": 2, "b": 3}


def test_validate_call_fills_defaults_and_returns_json_data() -> None:
    assert find_orders.validate_call('{"customer": "acme"}') == {
        "customer": "acme",
        "limit": 10,
        "status": "open",
        "tags": None,
    }
    assert ship.validate_call({"address": {"street": "1 Main", "city": "Oslo"}}) == {
        "address": {"street": "1 Main", "city": "Oslo"}
    }


def test_validate_call_empty_string_means_no_arguments() -> None:
    assert whoami.validate_call("") == {"greeting": "hi"}
    with pytest.raises(InvalidToolCallError, match=r"a: Field required"):
        add.validate_call("")


def test_validate_call_rejects_bad_json() -> None:
    with pytest.raises(InvalidToolCallError) as info:
        add.validate_call('{"a": 2, "b": 3')
    message = str(info.value)
    assert "tool 'add'" in message
    assert "not valid JSON" in message
    assert "position" in message
    assert "send a JSON object matching the tool's schema" in message


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("[1, 2]", "list"), ('"text"', "str"), ("3", "int"), ("null", "NoneType")],
)
def test_validate_call_rejects_non_object_json(raw: str, kind: str) -> None:
    with pytest.raises(InvalidToolCallError) as info:
        add.validate_call(raw)
    message = str(info.value)
    assert "tool 'add'" in message
    assert f"must be a JSON object, got {kind}" in message
    assert "send an object matching the tool's schema" in message


def test_validate_call_rejects_unknown_fields() -> None:
    with pytest.raises(InvalidToolCallError) as info:
        add.validate_call('{"a": 1, "b": 2, "c": 3}')
    message = str(info.value)
    assert "tool 'add' failed validation" in message
    assert "c: Extra inputs are not permitted" in message
    assert "correct them and call the tool again" in message


def test_validate_call_rejects_wrong_types_naming_each_field() -> None:
    with pytest.raises(InvalidToolCallError) as info:
        add.validate_call('{"a": "two", "b": [3]}')
    message = str(info.value)
    assert "tool 'add' failed validation" in message
    assert "a: Input should be a valid integer" in message
    assert "b: Input should be a valid integer" in message


def test_validate_call_enforces_annotated_constraints() -> None:
    with pytest.raises(
        InvalidToolCallError, match=r"limit: Input should be less than or equal to 50"
    ):
        find_orders.validate_call({"customer": "acme", "limit": 51})
    with pytest.raises(InvalidToolCallError, match=r"customer: String should have at least 2"):
        find_orders.validate_call({"customer": "a"})
    with pytest.raises(InvalidToolCallError, match=r"status: Input should be 'open' or 'closed'"):
        find_orders.validate_call({"customer": "acme", "status": "pending"})


def test_validate_call_names_nested_locations() -> None:
    with pytest.raises(InvalidToolCallError, match=r"address\.city: Field required"):
        ship.validate_call({"address": {"street": "1 Main"}})


def test_validate_call_does_not_accept_the_context_as_an_argument() -> None:
    with pytest.raises(InvalidToolCallError, match="ctx: Extra inputs are not permitted"):
        whoami.validate_call({"ctx": {"run_id": "spoofed"}})


# invoke -----------------------------------------------------------------------


def test_invoke_runs_the_function() -> None:
    assert add.invoke({"a": 2, "b": 3}, CTX) == 5


def test_invoke_injects_the_context() -> None:
    assert whoami.invoke({"greeting": "hello"}, CTX) == "hello run_1 run_1:0:0 tester 0"
    assert whoami.invoke({}, CTX) == "hi run_1 run_1:0:0 tester 0"


def test_invoke_passes_models_and_dumps_output_as_json_data() -> None:
    output = ship.invoke({"address": {"street": "1 Main", "city": "Oslo"}}, CTX)
    assert output == {"total_cents": 4, "paid_on": "2024-01-02"}


def test_invoke_validates_the_output_against_the_return_annotation() -> None:
    with pytest.raises(ValidationError):
        lies_about_output.invoke({}, CTX)


def test_invoke_validates_its_arguments() -> None:
    with pytest.raises(ValidationError):
        add.invoke({"a": "x", "b": 1}, CTX)


def test_invoke_enforces_the_timeout() -> None:
    release = threading.Event()
    finished = threading.Event()

    @tool(timeout_s=0.2)
    def hangs() -> str:
        """Hang until released."""
        release.wait(5)
        finished.set()
        return "late"

    started = time.monotonic()
    try:
        with pytest.raises(ToolTimeoutError) as info:
            hangs.invoke({}, CTX)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert 0.15 <= elapsed < 2.0
    message = str(info.value)
    assert "tool 'hangs' did not finish within 0.2s" in message
    assert "raise its timeout" in message
    assert finished.wait(2)


def test_invoke_within_timeout_returns_normally() -> None:
    @tool(timeout_s=2)
    def quick(delay: float) -> str:
        """Sleep briefly."""
        time.sleep(delay)
        return "done"

    assert quick.invoke({"delay": 0.01}, CTX) == "done"


def test_invoke_propagates_tool_exceptions() -> None:
    @tool
    def fails(x: int) -> int:
        """Always fails."""
        raise RuntimeError(f"cannot handle {x}")

    with pytest.raises(RuntimeError, match="cannot handle 7"):
        fails.invoke({"x": 7}, CTX)


# agents' tools --------------------------------------------------------------


def _agent(tools: list[Tool], name: str = "tester") -> Agent:
    return Agent(name=name, instructions="test", model=ScriptedModel([]), tools=tools)


def test_agent_tool_lookup() -> None:
    agent = _agent([add, whoami])
    assert agent.tool("add") is add
    assert agent.tool("whoami") is whoami


def test_agent_unknown_tool_is_an_invalid_tool_call() -> None:
    agent = _agent([add, whoami])
    with pytest.raises(InvalidToolCallError) as info:
        agent.tool("multiply")
    message = str(info.value)
    assert "tool 'multiply' does not exist for agent 'tester'" in message
    assert "available tools: add, whoami" in message


def test_agent_without_tools_says_none_are_available() -> None:
    with pytest.raises(InvalidToolCallError, match="available tools: none"):
        _agent([]).tool("add")


def test_agent_rejects_duplicate_tool_names() -> None:
    @tool(name="add")
    def another_add(a: int, b: int) -> int:
        """A second tool called add."""
        return a - b

    with pytest.raises(ConfigError, match=r"agent 'dup' declares tools twice: add"):
        _agent([add, whoami, another_add], name="dup")
    with pytest.raises(ConfigError, match="declares tools twice: add"):
        _agent([add, add], name="dup")


def test_tool_definitions_work_for_any_json_ready_output() -> None:
    @tool
    def report(n: int) -> dict[str, Any]:
        """Return a mapping."""
        return {"n": n, "items": list(range(n))}

    assert report.invoke({"n": 3}, CTX) == {"n": 3, "items": [0, 1, 2]}
