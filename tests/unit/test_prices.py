"""Prices from genai-prices under TETHER_MODEL_PRICES, the bounds budgets reserve, and
the cost budget refused where it could not be enforced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from genai_prices import Usage, calc_price

from tests.agents import add
from tether import planner
from tether.agent.definition import Agent, register
from tether.config import get_settings
from tether.errors import UnknownModelPriceError, UnknownRunError
from tether.models import (
    FallbackModel,
    ModelClient,
    ModelResponse,
    OpenAIModel,
    ScriptedModel,
    text,
)
from tether.models.prices import (
    TEMPLATE_ALLOWANCE_TOKENS,
    cost_bound_usd,
    cost_usd,
    known_price,
    prompt_token_bound,
    require_prices,
    reserved_cost_usd,
    token_bound,
)
from tether.runtime import Runtime
from tether.store.runs import run_id_for
from tether.store.state import ChatMessage, RunState, RunStatus, ToolCall, openai_json_size
from tether.testing.openai_server import Fault, ScriptedOpenAIServer
from tether.transport.wire import BudgetLimits, ErrorCategory


@pytest.fixture(autouse=True)
def prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No TETHER_MODEL_PRICES unless a test sets one; settings re-read on both sides."""
    monkeypatch.delenv("TETHER_MODEL_PRICES", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def set_prices(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[float]]) -> None:
    monkeypatch.setenv("TETHER_MODEL_PRICES", json.dumps(table))
    get_settings.cache_clear()


# prices ---------------------------------------------------------------------------------


def test_known_prices_come_from_genai_prices() -> None:
    assert cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert cost_usd("gpt-4.1", 1_000_000, 1_000_000) == pytest.approx(2.0 + 8.0)
    # Dated and provider-specific names match the family, as genai-prices matches them.
    assert cost_usd("gpt-4o-mini-2024-07-18", 1000, 500) == pytest.approx(
        (1000 * 0.15 + 500 * 0.60) / 1e6
    )
    claude = calc_price(Usage(input_tokens=1234, output_tokens=567), "claude-3-5-sonnet-latest")
    assert cost_usd("claude-3-5-sonnet-latest", 1234, 567) == pytest.approx(
        float(claude.total_price)
    )
    assert known_price("gpt-4o-mini") and known_price("claude-3-5-sonnet-latest")


def test_a_model_genai_prices_lacks_has_no_price() -> None:
    assert not known_price("local-llama")
    assert cost_usd("local-llama", 1000, 1000) == 0.0
    assert cost_bound_usd("local-llama", 1000) is None


def test_tether_model_prices_take_precedence(prices: pytest.MonkeyPatch) -> None:
    set_prices(prices, {"gpt-4.1": [1.0, 1.0], "local-llama": [0.5, 1.5]})
    assert cost_usd("gpt-4.1", 1_000_000, 1_000_000) == pytest.approx(2.0)  # not 10
    assert cost_usd("local-llama", 1_000_000, 1_000_000) == pytest.approx(2.0)
    assert known_price("local-llama")
    assert cost_bound_usd("local-llama", 2_000_000) == pytest.approx(3.0)
    assert cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)  # the rest untouched


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4.1", "gemini-2.5-pro"])
@pytest.mark.parametrize("tokens", [1, 3_000, 250_000])
def test_the_cost_bound_covers_every_split_of_the_tokens(model: str, tokens: int) -> None:
    # gemini-2.5-pro's rates rise past 200k input tokens: the bound holds across tiers.
    bound = cost_bound_usd(model, tokens)
    assert bound is not None
    for share in (0.0, 0.1, 0.5, 0.9, 1.0):
        spent = int(tokens * share)
        assert cost_usd(model, spent, tokens - spent) <= bound + 1e-12


# refusing a cost budget that could not be enforced -----------------------------------


def test_a_cost_budget_on_a_model_without_a_price_is_refused() -> None:
    model = OpenAIModel("local-llama", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(UnknownModelPriceError) as info:
        require_prices(model, BudgetLimits(max_cost_usd=0.25))
    message = str(info.value)
    assert "'local-llama'" in message
    assert "max_cost_usd=0.25" in message
    assert "TETHER_MODEL_PRICES='{\"local-llama\": [0.5, 1.5]}'" in message
    # No cost budget, nothing to enforce: the same model is fine.
    require_prices(model, BudgetLimits(max_steps=3))


def test_a_fallback_is_refused_for_the_one_model_without_a_price(
    prices: pytest.MonkeyPatch,
) -> None:
    model = FallbackModel(
        OpenAIModel("gpt-4o-mini"), OpenAIModel("local-llama"), ScriptedModel([], label="free")
    )
    assert model.billed_models == ("gpt-4o-mini", "local-llama")
    with pytest.raises(UnknownModelPriceError) as info:
        require_prices(model, BudgetLimits(max_cost_usd=1.0))
    assert info.value.models == ["local-llama"]

    set_prices(prices, {"local-llama": [0.5, 1.5]})
    require_prices(model, BudgetLimits(max_cost_usd=1.0))
    # The dearer of the two models is reserved: local-llama's 1.5 per million output tokens.
    assert reserved_cost_usd(model, 1_000_000, BudgetLimits(max_cost_usd=1.0)) == pytest.approx(1.5)


def test_the_scripted_model_is_free_and_never_refused() -> None:
    model = ScriptedModel([text("hi")])
    assert model.billed_models == ()
    require_prices(model, BudgetLimits(max_cost_usd=0.01))
    assert reserved_cost_usd(model, 10_000, BudgetLimits(max_cost_usd=0.01)) == 0.0


class Routed:
    """A client whose calls one endpoint serves under one name and bills at other models."""

    system = "openai"

    def __init__(self, served: OpenAIModel, *billed: str) -> None:
        self.served = served
        self.billed_models = billed

    @property
    def name(self) -> str:
        return self.served.name

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return self.served.estimate_tokens(messages, tools)

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse:
        return self.served.complete(
            messages, tools, deadline=deadline, response_format=response_format
        )


def test_a_cost_budget_is_priced_at_the_clients_billed_models_not_its_name(
    prices: pytest.MonkeyPatch,
) -> None:
    model = Routed(OpenAIModel("gpt-4o-mini"), "local-llama", "gpt-4o")
    assert isinstance(model, ModelClient)
    with pytest.raises(UnknownModelPriceError) as info:
        require_prices(model, BudgetLimits(max_cost_usd=1.0))
    assert info.value.models == ["local-llama"]  # gpt-4o-mini, its name, has a price

    set_prices(prices, {"local-llama": [0.5, 1.5]})
    require_prices(model, BudgetLimits(max_cost_usd=1.0))
    reserved = reserved_cost_usd(model, 1_000_000, BudgetLimits(max_cost_usd=1.0))
    assert reserved == pytest.approx(cost_bound_usd("gpt-4o", 1_000_000))
    assert reserved > (cost_bound_usd("gpt-4o-mini", 1_000_000) or 0.0)


# token bounds ---------------------------------------------------------------------------


def test_one_token_per_utf8_byte() -> None:
    assert token_bound("") == 0
    assert token_bound("abcd") == 4
    assert token_bound("é") == 2
    assert token_bound("日本") == 6
    assert token_bound("🎉") == 4


SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


def worst_case_tokens(rendered: str) -> int:
    """The most tokens any byte-level BPE tokenizer can make of ``rendered``.

    One per byte (a vocabulary with no merges at all) and one per special token.
    """
    specials = 0
    for special in SPECIAL_TOKENS:
        specials += rendered.count(special)
        rendered = rendered.replace(special, "")
    return specials + len(rendered.encode("utf-8"))


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN_TOOLS = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tools}"
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def _call_json(call: ToolCall, key: str) -> str:
    return json.dumps({"name": call.name, key: json.loads(call.arguments)}, ensure_ascii=False)


def render_chatml(messages: list[ChatMessage], tools: list[dict[str, Any]]) -> str:
    """What Qwen 2.5's chat template makes of a conversation (ChatML with Hermes tools)."""
    rest = messages
    system = QWEN_SYSTEM
    if messages[0].role == "system":
        system, rest = messages[0].content or "", messages[1:]
    if tools:
        lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
        system += QWEN_TOOLS.format(tools=lines)
    out = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for m in rest:
        if m.role == "tool":
            out.append(
                f"<|im_start|>user\n<tool_response>\n{m.content}\n</tool_response><|im_end|>\n"
            )
            continue
        content = (m.content or "") + "".join(
            f"\n<tool_call>\n{_call_json(c, 'arguments')}\n</tool_call>" for c in m.tool_calls or []
        )
        out.append(f"<|im_start|>{m.role}\n{content}<|im_end|>\n")
    return "".join(out) + "<|im_start|>assistant\n"


LLAMA_TOOLS = (
    "Given the following functions, please respond with a JSON for a function call with its "
    "proper arguments that best answers the given prompt.\n\nRespond in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)


def render_llama31(messages: list[ChatMessage], tools: list[dict[str, Any]]) -> str:
    """What Llama 3.1's chat template makes of it: tools as indented JSON in the first user turn."""
    rest = messages
    system = ""
    if messages[0].role == "system":
        system, rest = messages[0].content or "", messages[1:]
    out = [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{system}<|eot_id|>"
    ]
    offered = False
    for m in rest:
        role = "ipython" if m.role == "tool" else m.role
        content = m.content or ""
        if m.role == "user" and tools and not offered:
            offered = True
            listing = "".join(json.dumps(t, ensure_ascii=False, indent=4) + "\n\n" for t in tools)
            content = LLAMA_TOOLS + listing + content
        if m.tool_calls:
            content = "".join(_call_json(c, "parameters") for c in m.tool_calls)
        out.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>")
    return "".join(out) + "<|start_header_id|>assistant<|end_header_id|>\n\n"


ORDER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look up an order by its id; returns status, items and the customer.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "description": "e.g. ORD-2024-000123"},
                "include": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["items", "customer", "shipping"]},
                },
            },
            "required": ["order_id"],
        },
    },
}
ORDER_RESULT = {
    "order_id": "ORD-2024-000123",
    "status": "shipped",
    "customer": {"name": "Zoë Ångström-Müller", "city": "Malmö", "note": 'says "urgent"\n'},
    "items": [
        {"sku": f"SKU-{i:06d}", "title": t, "qty": i, "cents": 1999 * i}
        for i, t in enumerate(["Zelt 2P", "寝袋 -5°C", "Ліхтар", "🏕️ kit", "خيمة"], start=1)
    ],
    "tracking": "1Z999AA10123456784",
}
CALL = ToolCall(id="call_8f2b1c", name="lookup_order", arguments='{"order_id": "ORD-2024-000123"}')
CONVERSATIONS: dict[str, list[ChatMessage]] = {
    "english with a tool round trip": [
        ChatMessage(role="system", content="You are a support agent. Use the tools."),
        ChatMessage(role="user", content="Where is my order ORD-2024-000123? It's late."),
        ChatMessage(role="assistant", content=None, tool_calls=[CALL]),
        ChatMessage(
            role="tool", tool_call_id=CALL.id, content=json.dumps(ORDER_RESULT, ensure_ascii=False)
        ),
    ],
    "cjk, emoji and arabic": [
        ChatMessage(role="system", content="あなたはサポート担当です。丁寧に答えてください。"),
        ChatMessage(role="user", content="注文はどこですか？🙏🏽 已经两周了！ أين طلبي؟ " * 20),  # noqa: RUF001
    ],
    "escaped json result": [
        ChatMessage(role="user", content="hi"),
        ChatMessage(role="assistant", content=None, tool_calls=[CALL]),
        ChatMessage(
            role="tool", tool_call_id=CALL.id, content=json.dumps(ORDER_RESULT)
        ),  # ensure_ascii: \u escapes
    ],
    "one word, no system": [ChatMessage(role="user", content="hi")],
}


@pytest.mark.parametrize("render", [render_chatml, render_llama31])
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("with_tools", [True, False])
def test_the_prompt_bound_covers_what_a_chat_template_renders(
    render: Any, conversation: str, with_tools: bool
) -> None:
    messages = CONVERSATIONS[conversation]
    tools = [ORDER_TOOL, {**ORDER_TOOL, "function": {**ORDER_TOOL["function"], "name": "b"}}]
    offered = tools if with_tools else []
    worst = worst_case_tokens(render(messages, offered))
    bound = prompt_token_bound(messages, offered)
    assert bound >= worst
    # Loose enough to hold, not so loose that budgets refuse calls they could afford.
    assert bound <= 2 * worst + TEMPLATE_ALLOWANCE_TOKENS


def test_a_model_estimate_covers_the_worst_case_prompt_and_the_output_cap() -> None:
    messages = CONVERSATIONS["cjk, emoji and arabic"]
    # Models whose tokenizer Tether does not ship (tests/unit/test_tokens.py has the others).
    for model in (OpenAIModel("local-llama", max_output_tokens=700), ScriptedModel([])):
        estimate = model.estimate_tokens(messages, [ORDER_TOOL])
        worst_prompt = max(
            worst_case_tokens(r(messages, [ORDER_TOOL])) for r in (render_chatml, render_llama31)
        )
        assert estimate >= worst_prompt + model.max_output_tokens


# the planner: refused at intake, reserved before the call ------------------------------


@pytest.fixture(scope="module")
def endpoint() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(lambda messages: text("done")) as server:
        yield server


@pytest.fixture
def served(endpoint: ScriptedOpenAIServer) -> Iterator[ScriptedOpenAIServer]:
    endpoint.requests.clear()
    endpoint.schedule.clear()
    yield endpoint
    endpoint.schedule.clear()


_agents: dict[str, Agent] = {}


def start(rt: Runtime, event: dict[str, Any]) -> RunState:
    run_id = planner.start(rt, event)
    assert run_id is not None, rt.store.rejections.reason(event["event_id"])
    return rt.store.load(run_id)


def agent_on(endpoint: ScriptedOpenAIServer, name: str, model: str, budget: BudgetLimits) -> Agent:
    """An agent whose model is served by ``endpoint``, registered once per name."""
    if name not in _agents:
        _agents[name] = register(
            Agent(
                name=name,
                instructions="Answer.",
                model=OpenAIModel(model, base_url=endpoint.base_url, timeout_s=5, max_attempts=2),
                tools=[add],
                budget=budget,
            )
        )
    return _agents[name]


def test_intake_refuses_a_cost_budget_on_a_model_without_a_price(
    runtime: Runtime, served: ScriptedOpenAIServer
) -> None:
    agent_on(served, "unit_unpriced_capped", "local-llama", BudgetLimits(max_cost_usd=0.5))
    event = {"event_id": "evt-unpriced", "agent": "unit_unpriced_capped", "input": "hi"}
    assert planner.start(runtime, event) is None

    reason = runtime.store.rejections.reason("evt-unpriced")
    assert reason is not None
    assert "unit_unpriced_capped" in reason and "'local-llama'" in reason
    assert "TETHER_MODEL_PRICES" in reason
    assert [r["reason"] for r in runtime.store.rejections.recent()] == [reason]
    with pytest.raises(UnknownRunError):
        runtime.store.load(run_id_for("evt-unpriced"))
    assert served.requests == []  # never called


def test_intake_refuses_a_cost_budget_the_event_adds(
    runtime: Runtime, served: ScriptedOpenAIServer, prices: pytest.MonkeyPatch
) -> None:
    agent_on(served, "unit_unpriced", "local-llama", BudgetLimits(max_steps=3))
    capped = {
        "event_id": "evt-capped",
        "agent": "unit_unpriced",
        "input": "hi",
        "budget": {"max_cost_usd": 0.1},
    }
    assert planner.start(runtime, capped) is None
    assert "TETHER_MODEL_PRICES" in (runtime.store.rejections.reason("evt-capped") or "")

    # Without a cost budget the same model runs, and with a price it runs under one.
    plain = {"event_id": "evt-plain", "agent": "unit_unpriced", "input": "hi"}
    assert start(runtime, plain).status == RunStatus.succeeded
    set_prices(prices, {"local-llama": [0.5, 1.5]})
    state = start(runtime, {**capped, "event_id": "evt-priced"})
    assert state.limits.max_cost_usd == 0.1
    assert state.status == RunStatus.succeeded
    assert runtime.store.budgets.usage(state.run_id).cost_usd > 0


def test_the_first_call_cannot_overspend_the_cost_budget(
    runtime: Runtime, served: ScriptedOpenAIServer
) -> None:
    # gpt-4o-mini: even this short prompt can cost more than a millionth of a dollar.
    agent_on(served, "unit_tiny_budget", "gpt-4o-mini", BudgetLimits(max_cost_usd=0.000001))
    state = start(runtime, {"event_id": "evt-tiny", "agent": "unit_tiny_budget", "input": "hi"})
    assert state.status == RunStatus.budget_exhausted
    assert state.error is not None and "max_cost_usd" in state.error.message
    assert served.requests == []  # refused before the call, not found out after it


def test_a_step_reserves_the_cost_bound_then_settles_to_the_real_cost(
    runtime: Runtime, served: ScriptedOpenAIServer
) -> None:
    agent_on(served, "unit_priced", "gpt-4o-mini", BudgetLimits(max_cost_usd=1.0))
    state = start(runtime, {"event_id": "evt-priced-ok", "agent": "unit_priced", "input": "hi"})
    assert state.status == RunStatus.succeeded
    (call,) = [e.data for _, e in runtime.store.log.read(state.run_id) if e.kind == "model_call"]
    usage = runtime.store.budgets.usage(state.run_id)
    assert call["cost_usd"] > 0
    assert usage.cost_usd == pytest.approx(call["cost_usd"])
    assert usage.tokens == call["input_tokens"] + call["output_tokens"]


def test_intake_prices_a_cost_budget_at_the_billed_models(
    runtime: Runtime, served: ScriptedOpenAIServer
) -> None:
    served_model = OpenAIModel("gpt-4o-mini", base_url=served.base_url, timeout_s=5, max_attempts=2)
    register(
        Agent(
            name="unit_routed",
            instructions="Answer.",
            model=Routed(served_model, "local-llama"),
            budget=BudgetLimits(max_cost_usd=0.5),
        )
    )
    event = {"event_id": "evt-routed", "agent": "unit_routed", "input": "hi"}
    assert planner.start(runtime, event) is None
    assert "'local-llama'" in (runtime.store.rejections.reason("evt-routed") or "")
    assert served.requests == []


def test_a_permanent_model_error_fails_the_run_as_model_permanent(
    runtime: Runtime, served: ScriptedOpenAIServer
) -> None:
    agent_on(served, "unit_bad_key", "gpt-4o-mini", BudgetLimits(max_cost_usd=1.0))
    served.schedule[:] = [Fault.unauthorized]
    state = start(runtime, {"event_id": "evt-bad-key", "agent": "unit_bad_key", "input": "hi"})
    assert state.status == RunStatus.failed
    assert state.error is not None
    assert state.error.category == ErrorCategory.model_permanent
    assert "HTTP 401" in state.error.message
    assert "TETHER_MODEL_API_KEY" in state.error.message
    assert "resubmit" in state.error.message
    assert len(served.requests) == 1  # not retried
    (failed,) = [
        e.data for _, e in runtime.store.log.read(state.run_id) if e.kind == "model_failed"
    ]
    assert (failed["status"], failed["error_category"]) == (401, "model_permanent")
    usage = runtime.store.budgets.usage(state.run_id)
    # The reservation is given back whole.
    assert usage.tokens == 0
    assert usage.cost_usd == pytest.approx(0.0)


def test_a_transient_model_error_still_fails_the_run_as_model_transient(
    runtime: Runtime, served: ScriptedOpenAIServer
) -> None:
    agent_on(served, "unit_flaky_endpoint", "gpt-4o-mini", BudgetLimits())
    served.schedule[:] = [Fault.server_error, Fault.server_error]
    state = start(
        runtime, {"event_id": "evt-flaky-endpoint", "agent": "unit_flaky_endpoint", "input": "hi"}
    )
    assert state.error is not None and state.error.category == ErrorCategory.model_transient
    assert "once the endpoint is healthy" in state.error.message
    assert len(served.requests) == 2  # max_attempts


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_the_conversation_is_measured_without_writing_it_whole(conversation: str) -> None:
    messages = CONVERSATIONS[conversation]
    for utf8, written in (
        (True, json.dumps([m.to_openai() for m in messages], ensure_ascii=False).encode()),
        (False, json.dumps([m.to_openai() for m in messages])),
    ):
        assert openai_json_size(messages, utf8=utf8) == len(written)
    assert openai_json_size([], utf8=True) == len("[]")
    changed = messages[0].model_copy(update={"content": "другое"})
    assert openai_json_size([changed], utf8=True) == len(
        json.dumps([changed.to_openai()], ensure_ascii=False).encode()
    )
