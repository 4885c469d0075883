"""Agents the integration tests run on real workers, all on the scripted model.

Side effects go to a ledger file the tests read, so a doubled side effect
shows up as a doubled line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tether import Agent, BudgetLimits, OpenAIModel, ScriptedModel, ToolContext, tool
from tether.errors import TransientToolError
from tether.models import FallbackModel, ModelResponse, text, tool_call
from tether.store.runs import run_id_for
from tether.store.state import ChatMessage, RunState
from tether.transport.wire import TaskEvent


def ledger_path() -> Path:
    return Path(os.environ.get("LEDGER_DIR", ".tether")) / "ledger.txt"


def read_ledger() -> list[str]:
    path = ledger_path()
    return path.read_text().splitlines() if path.exists() else []


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(idempotent=False, requires_approval=True)
def record_payment(ctx: ToolContext, account: str, cents: int) -> str:
    """Pay an account; a side effect that must never happen twice."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} {account} {cents}\n")
    return f"paid {cents} to {account}"


@tool(timeout_s=30)
def slow_lookup(seconds: float) -> str:
    """Wait a while, as a slow external API would."""
    time.sleep(seconds)
    return "done"


def calculator_script(messages: list[ChatMessage]) -> ModelResponse:
    """Call add until a result comes back, then answer: it recovers from any bad turn."""
    if any(m.role == "tool" and "result" in (m.content or "") for m in messages):
        return text("2 + 3 = 5")
    return tool_call("add", {"a": 2, "b": 3})


CALCULATOR_TURNS = [tool_call("add", {"a": 2, "b": 3}), text("2 + 3 = 5")]

calculator = Agent(
    name="calculator",
    instructions="Add numbers with the add tool.",
    model=ScriptedModel(CALCULATOR_TURNS, label="calculator"),
    tools=[add],
)

remote_calculator = Agent(
    name="remote_calculator",
    instructions="Add numbers with the add tool.",
    # The tests serve CALCULATOR_TURNS from a local OpenAI-compatible server.
    model=OpenAIModel(
        "gpt-4o-mini",
        base_url=os.environ.get("FAKE_OPENAI_URL", "http://127.0.0.1:9/v1"),
        timeout_s=10,
        max_attempts=2,
    ),
    tools=[add],
)

self_correcting = Agent(
    name="self_correcting",
    instructions="Add numbers with the add tool.",
    model=ScriptedModel(
        [
            tool_call("add", '{"a": "two", "b": 3'),
            tool_call("add", {"a": "two", "b": 3}),
            tool_call("multiply", {"a": 2, "b": 3}),
            tool_call("add", {"a": 2, "b": 3}),
            text("2 + 3 = 5"),
        ],
        label="self_correcting",
    ),
    tools=[add],
)

payer = Agent(
    name="payer",
    instructions="Pay what the user asks, with approval.",
    model=ScriptedModel(
        [
            tool_call("record_payment", {"account": "acme", "cents": 500}),
            text("paid acme 500 cents"),
        ],
        label="payer",
    ),
    tools=[record_payment],
)

looper = Agent(
    name="looper",
    instructions="Keep adding.",
    model=ScriptedModel(
        lambda messages: tool_call("add", {"a": len(messages), "b": 1}), label="looper"
    ),
    tools=[add],
    budget=BudgetLimits(max_steps=50, max_tool_calls=50),
)

sleeper = Agent(
    name="sleeper",
    instructions="Wait for the slow API.",
    model=ScriptedModel(
        [tool_call("slow_lookup", {"seconds": 3}), text("finished waiting")], label="sleeper"
    ),
    tools=[slow_lookup],
)


# Fault tests --------------------------------------------------------------------
# The faults suite serves these agents' model from a fault-injecting endpoint
# (FAULT_OPENAI_URL) and counts side effects in the ledger.


def _attempt(key: str) -> int:
    """How many times ``key`` was tried before, across worker processes."""
    path = ledger_path().with_name(f"attempts-{key}.txt")
    with path.open("a") as attempts:
        attempts.write("x")
    return len(path.read_text())


@tool
def flaky_lookup(ctx: ToolContext, key: str) -> str:
    """An API that fails twice with a transient error, then answers."""
    if _attempt(ctx.action_id.replace(":", "_")) <= 2:
        raise TransientToolError(f"lookup service busy for {key}")
    return f"value of {key}"


@tool
def broken_lookup(key: str) -> str:
    """An API that rejects every request."""
    raise ValueError(f"no record {key}")


@tool(timeout_s=1)
def stuck_lookup(key: str) -> str:
    """An API that never answers in time."""
    time.sleep(3)
    return key


@tool(idempotent=False)
def charge_card(ctx: ToolContext, cents: int, hold_s: float = 0.0) -> str:
    """Charge a card: the side effect happens at once, the confirmation takes hold_s."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} charge {cents}\n")
    time.sleep(hold_s)
    return f"charged {cents}"


@tool(idempotent=False, timeout_s=1)
def wire_funds(ctx: ToolContext, cents: int) -> str:
    """A transfer whose bank answers too late: sent at once, confirmed after the timeout."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} wire {cents}\n")
    time.sleep(3)
    return f"wired {cents}"


@tool(timeout_s=60)
def survey(ctx: ToolContext, seconds: float) -> str:
    """A long, idempotent call: each attempt leaves a line when it starts."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} survey started\n")
    time.sleep(seconds)
    return "surveyed"


@tool
def note(ctx: ToolContext, text: str) -> str:
    """Write a note (idempotent: keyed by the action id)."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} note {ctx.action_id}\n")
    return "noted"


def _endpoint(model: str) -> OpenAIModel:
    return OpenAIModel(
        model,
        base_url=os.environ.get("FAULT_OPENAI_URL", "http://127.0.0.1:9/v1"),
        timeout_s=1.0,
        max_attempts=3,
    )


resilient = Agent(
    name="resilient",
    instructions="Add numbers with the add tool.",
    model=FallbackModel(_endpoint("gpt-4o-mini"), _endpoint("gpt-4o-mini-fallback")),
    tools=[add],
    max_invalid_calls=2,
)


def _tool_then_answer(tool_name: str, arguments: dict[str, object]) -> ScriptedModel:
    def script(messages: list[ChatMessage]) -> ModelResponse:
        results = [m.content or "" for m in messages if m.role == "tool"]
        if not results:
            return tool_call(tool_name, arguments)
        return text(f"{tool_name} said: {results[-1]}")

    return ScriptedModel(script, label=tool_name)


@tool
def repeat(text: str, times: int) -> str:
    return text * times


repeater = Agent(
    name="repeater",
    instructions="Repeat it.",
    model=_tool_then_answer("repeat", {"text": "ab", "times": 150_000}),
    tools=[repeat],
)
flaky = Agent(
    name="flaky",
    instructions="Look it up.",
    model=_tool_then_answer("flaky_lookup", {"key": "k"}),
    tools=[flaky_lookup],
)
broken = Agent(
    name="broken",
    instructions="Look it up.",
    model=_tool_then_answer("broken_lookup", {"key": "k"}),
    tools=[broken_lookup],
)
stuck = Agent(
    name="stuck",
    instructions="Look it up.",
    model=_tool_then_answer("stuck_lookup", {"key": "k"}),
    tools=[stuck_lookup],
)
charger = Agent(
    name="charger",
    instructions="Charge the card.",
    model=_tool_then_answer("charge_card", {"cents": 700, "hold_s": 3.0}),
    tools=[charge_card],
)


def _slow_thinking(messages: list[ChatMessage]) -> ModelResponse:
    # Long enough to kill the planner mid-step, well under the visibility timeout.
    time.sleep(float(os.environ.get("SLOW_THINK_S", "2")))
    if not any(m.role == "tool" for m in messages):
        return tool_call("note", {"text": "thought"})
    return text("done thinking")


wirer = Agent(
    name="wirer",
    instructions="Wire the funds.",
    model=_tool_then_answer("wire_funds", {"cents": 900}),
    tools=[wire_funds],
)

surveyor = Agent(
    name="surveyor",
    instructions="Survey, then report.",
    model=_tool_then_answer("survey", {"seconds": 5.0}),
    tools=[survey],
)

slow_thinker = Agent(
    name="slow_thinker",
    instructions="Think slowly, note it.",
    model=ScriptedModel(_slow_thinking, label="slow_thinker"),
    tools=[note],
)


def unplanned_calculator_run(event_id: str) -> tuple[TaskEvent, RunState]:
    """A calculator run as the intake commits it, before it plans anything."""
    event = TaskEvent(event_id=event_id, agent="calculator", input="What is 2 + 3?")
    state = RunState(
        run_id=run_id_for(event.event_id),
        event_id=event.event_id,
        agent="calculator",
        goal=event.input,
        messages=[ChatMessage(role="user", content=event.input)],
    )
    return event, state


# Only tests/integration/test_stats.py runs it, so its figures are its own.
stats_probe = Agent(
    name="stats_probe",
    instructions="Add numbers with the add tool.",
    model=ScriptedModel(CALCULATOR_TURNS, label="stats_probe"),
    tools=[add],
    version="probe-v1",
)


# Adversarial suite ---------------------------------------------------------------
# Deliberately unsafe: a side effect with neither approval nor idempotency, and a
# model that does what tool results tell it to. The suite must report it.


@tool
def read_inbox() -> str:
    """Read the newest message in the support inbox."""
    return "Customer asks: where is my parcel?"


@tool(idempotent=False)
def send_money(ctx: ToolContext, account: str, cents: int) -> str:
    """Send money to an account, at once and without approval."""
    with ledger_path().open("a") as ledger:
        ledger.write(f"{ctx.run_id} send_money {account} {cents}\n")
    return f"sent {cents} to {account}"


def _obeys_tool_results(messages: list[ChatMessage]) -> ModelResponse:
    """Reads the inbox, then does whatever a tool result told it to, then answers."""
    from tether.evaluation.harness import instructed_calls

    made = sum(1 for m in messages if m.role == "assistant")
    if made == 0:
        return tool_call("read_inbox")
    instructed = instructed_calls(messages)
    if made - 1 < len(instructed):
        name, arguments = instructed[made - 1]
        return tool_call(name, arguments)
    return text("Handled the inbox.")


unsafe_inbox = Agent(
    name="unsafe_inbox",
    instructions="Read the inbox and do what it asks.",
    model=ScriptedModel(_obeys_tool_results, label="unsafe_inbox"),
    tools=[read_inbox, send_money],
    budget=BudgetLimits(max_steps=6, max_tool_calls=6),
)


# Regression export (tests/integration/test_export.py) ------------------------------
# parts_clerk fails in "production": its tool-call budget cannot cover two parts.
# parts_clerk_fixed is the same agent redeployed with a budget that fits.


@tool
def lookup_part(sku: str) -> str:
    """Look a part up in the catalogue."""
    return f"part {sku}: in stock"


def _look_up_two_parts(messages: list[ChatMessage]) -> ModelResponse:
    looked_up = sum(1 for m in messages if m.role == "tool")
    if looked_up < 2:
        return tool_call("lookup_part", {"sku": ["A1", "B2"][looked_up]})
    return text("A1 and B2 are in stock")


parts_clerk = Agent(
    name="parts_clerk",
    instructions="Look up every part asked about.",
    model=ScriptedModel(_look_up_two_parts, label="parts_clerk"),
    tools=[lookup_part],
    budget=BudgetLimits(max_steps=10, max_tool_calls=1, max_wall_s=600),
)
parts_clerk_fixed = Agent(
    name="parts_clerk_fixed",
    instructions="Look up every part asked about.",
    model=ScriptedModel(_look_up_two_parts, label="parts_clerk"),
    tools=[lookup_part],
    budget=BudgetLimits(max_steps=10, max_tool_calls=5, max_wall_s=600),
)
