"""Model clients: the scripted model, and OpenAIModel against a local fake endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest
from tenacity import wait_fixed

from tether.config import get_settings
from tether.errors import (
    ConfigError,
    ModelError,
    ModelPermanentError,
    ModelTransientError,
    TetherError,
)
from tether.evaluation.harness import Gullible, HarnessModel
from tether.evaluation.recording import Recording
from tether.evaluation.replay_runtime import ReplayModel
from tether.models import (
    FallbackModel,
    ModelClient,
    ModelResponse,
    OpenAIModel,
    ScriptedModel,
    from_turns,
    text,
    tool_call,
)
from tether.models.openai import wait_retry_after
from tether.models.prices import cost_usd, prompt_token_bound, typical_tokens
from tether.store.state import ChatMessage, ToolCall
from tether.testing.openai_server import Fault, ScriptedOpenAIServer
from tether.transport.wire import RunEvent

SYSTEM = ChatMessage(role="system", content="You add numbers.")
USER = ChatMessage(role="user", content="What is 2 + 3?")
ADD_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        },
    },
}


def assistant(content: str | None = None, calls: list[ToolCall] | None = None) -> ChatMessage:
    return ChatMessage(role="assistant", content=content, tool_calls=calls)


# ScriptedModel ------------------------------------------------------------------------


def test_scripted_model_name() -> None:
    assert ScriptedModel([], label="calculator").name == "scripted:calculator"
    assert ScriptedModel([]).name == "scripted:script"


def test_scripted_model_picks_turns_by_assistant_message_count() -> None:
    model = ScriptedModel([tool_call("add", {"a": 2, "b": 3}), text("2 + 3 = 5")], label="calc")
    first = model.complete([SYSTEM, USER], [ADD_SCHEMA])
    assert first.content is None
    assert [(c.name, json.loads(c.arguments)) for c in first.tool_calls] == [
        ("add", {"a": 2, "b": 3})
    ]

    history = [
        SYSTEM,
        USER,
        assistant(calls=first.tool_calls),
        ChatMessage(role="tool", tool_call_id=first.tool_calls[0].id, content="5"),
    ]
    second = model.complete(history, [ADD_SCHEMA])
    assert second.content == "2 + 3 = 5"
    assert second.tool_calls == []

    # Only assistant messages count: extra user or tool messages do not advance the script.
    assert model.complete([SYSTEM, USER, USER, USER], []).tool_calls[0].name == "add"


def test_scripted_model_past_its_script_says_so() -> None:
    model = ScriptedModel([text("only turn")])
    answer = model.complete([SYSTEM, USER, assistant("only turn"), USER], [])
    assert answer.content == "scripted model: the script has 1 turns and no more to say"
    assert answer.tool_calls == []


def test_scripted_model_replays_deterministically() -> None:
    model = ScriptedModel([tool_call("add", {"a": 1, "b": 1})])
    assert model.complete([SYSTEM, USER], [ADD_SCHEMA]) == model.complete(
        [SYSTEM, USER], [ADD_SCHEMA]
    )


def test_scripted_model_names_itself_in_responses_and_costs_nothing() -> None:
    model = ScriptedModel([text("hello there")], label="greeter")
    response = model.complete([SYSTEM, USER], [])
    assert response.model == "scripted:greeter"
    assert response.cost_usd == 0.0
    prompt = json.dumps([SYSTEM.to_openai(), USER.to_openai()]) + json.dumps([])
    assert response.input_tokens == typical_tokens(prompt)
    assert response.output_tokens == typical_tokens("hello there")
    assert response.total_tokens == response.input_tokens + response.output_tokens


def test_scripted_model_gives_default_call_ids_unique_per_position() -> None:
    turn = ModelResponse(
        model="scripted",
        tool_calls=[
            ToolCall(id="call_add", name="add", arguments="{}"),  # the tool_call() default id
            ToolCall(id="", name="add", arguments="{}"),
            ToolCall(id="mine", name="add", arguments="{}"),
        ],
    )
    model = ScriptedModel([turn])
    calls = model.complete([SYSTEM, USER], []).tool_calls
    assert [c.id for c in calls] == ["call_2_0", "call_2_1", "mine"]
    explicit = ScriptedModel([tool_call("add", {}, call_id="call_fixed")])
    assert explicit.complete([SYSTEM, USER], []).tool_calls[0].id == "call_fixed"


def test_scripted_model_keeps_malformed_arguments_verbatim() -> None:
    model = ScriptedModel([tool_call("add", '{"a": "two", "b": 3')])
    (call,) = model.complete([SYSTEM, USER], []).tool_calls
    assert call.arguments == '{"a": "two", "b": 3'


def test_scripted_model_with_a_callable_script() -> None:
    seen: list[int] = []

    def script(messages: list[ChatMessage]) -> ModelResponse:
        seen.append(len(messages))
        return text(f"{len(messages)} messages")

    model = ScriptedModel(script, label="counter")
    assert model.complete([SYSTEM, USER, USER], []).content == "3 messages"
    assert seen == [3]


def test_scripted_model_estimate_is_an_upper_bound() -> None:
    model = ScriptedModel([tool_call("add", {"a": 2, "b": 3})])
    messages = [SYSTEM, USER]
    estimate = model.estimate_tokens(messages, [ADD_SCHEMA])
    response = model.complete(messages, [ADD_SCHEMA])
    assert estimate >= response.total_tokens
    assert estimate == prompt_token_bound(messages, [ADD_SCHEMA]) + model.max_output_tokens


def test_scripted_model_bills_a_long_answer_as_a_capped_model_would() -> None:
    model = ScriptedModel([text("word " * 2000)], max_output_tokens=100)
    response = model.complete([USER], [])
    assert response.output_tokens == 100
    assert model.estimate_tokens([USER], []) >= response.total_tokens


def test_both_clients_satisfy_the_protocol() -> None:
    assert isinstance(ScriptedModel([]), ModelClient)
    assert isinstance(OpenAIModel("gpt-4o-mini"), ModelClient)


class Undeclared:
    """A client that completes and estimates but says nothing of its system or billing."""

    name = "undeclared"

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return 1

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse:
        return text("hi")


def test_the_protocol_declares_what_callers_read_off_a_client() -> None:
    assert not isinstance(Undeclared(), ModelClient)
    for model in (ScriptedModel([]), OpenAIModel("gpt-4o-mini")):
        assert isinstance(model, ModelClient)
        assert isinstance(model.system, str) and model.system
    assert OpenAIModel("gpt-4o-mini").billed_models == ("gpt-4o-mini",)
    assert ScriptedModel([]).billed_models == ()


def test_wrapping_clients_speak_and_bill_as_the_model_they_wrap() -> None:
    inner = FallbackModel(OpenAIModel("gpt-4o-mini"), OpenAIModel("local-llama"))
    assert inner.system == "openai"
    recording = Recording(
        run_id="run_x", started=RunEvent(run_id="run_x", kind="run_started", step=0)
    )
    for wrapper in (ReplayModel(inner, recording), Gullible(inner)):
        assert isinstance(wrapper, ModelClient)
        assert wrapper.billed_models == ("gpt-4o-mini", "local-llama")
        assert wrapper.system == "openai"
    harness = HarnessModel(inner)
    assert isinstance(harness, ModelClient)
    assert harness.billed_models == () and harness.system == "tether.eval"


# prices ---------------------------------------------------------------------------------


@pytest.fixture
def default_prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TETHER_MODEL_PRICES, and no settings cached from before this test."""
    monkeypatch.delenv("TETHER_MODEL_PRICES", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_cost_from_the_price_table(default_prices: None) -> None:
    assert cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert cost_usd("gpt-4o-mini", 1000, 500) == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert cost_usd("no-such-model", 1000, 1000) == 0.0


def test_price_overrides_from_the_environment(
    default_prices: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_MODEL_PRICES", '{"my-model": [1.0, 2.0], "gpt-4o-mini": [10, 20]}')
    get_settings.cache_clear()
    assert cost_usd("my-model", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert cost_usd("gpt-4o-mini", 1_000_000, 0) == pytest.approx(10.0)


# the fake OpenAI-compatible endpoint ---------------------------------------------------


def completion(
    *,
    content: str | None = None,
    calls: list[dict[str, Any]] | None = None,
    model: str = "gpt-4o-mini",
    usage: dict[str, int] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if calls else "stop"}
        ]
        if choices
        else [],
    }
    if usage is not None:
        body["usage"] = {**usage, "total_tokens": sum(usage.values())}
    return body


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "test_error", "param": None, "code": None}}


class FakeOpenAI:
    """Serves POST /v1/chat/completions from a queue of replies; the last one repeats."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake.lock:
                    fake.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "at": time.monotonic(),
                        }
                    )
                    if self.path != "/v1/chat/completions" or not fake.replies:
                        status, headers, reply = 404, {}, error_body(f"no route {self.path}")
                    else:
                        status, headers, reply = (
                            fake.replies.pop(0) if len(fake.replies) > 1 else fake.replies[0]
                        )
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def reply(
        self,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> FakeOpenAI:
        self.replies.append((status, headers or {}, body))
        return self


@pytest.fixture
def fake_openai(default_prices: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    fake = FakeOpenAI()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        fake.thread.join(5)


def client(fake: FakeOpenAI, model: str = "gpt-4o-mini", **kwargs: Any) -> OpenAIModel:
    options: dict[str, Any] = {"api_key": "sk-test", "timeout_s": 5, "max_attempts": 2}
    options.update(kwargs)
    return OpenAIModel(model, base_url=fake.base_url, **options)


ADD_CALL = {
    "id": "call_abc",
    "type": "function",
    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
}


# OpenAIModel ----------------------------------------------------------------------------


def test_openai_model_parses_tool_calls_usage_and_cost(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(
        200,
        completion(
            calls=[
                ADD_CALL,
                {
                    "id": "call_def",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'},
                },
            ],
            model="gpt-4o-mini-2024-07-18",
            usage={"prompt_tokens": 1000, "completion_tokens": 500},
        ),
    )
    model = client(fake_openai, max_output_tokens=256)
    response = model.complete([SYSTEM, USER], [ADD_SCHEMA])

    assert response.content is None
    assert response.tool_calls == [
        ToolCall(id="call_abc", name="add", arguments='{"a": 2, "b": 3}'),
        ToolCall(id="call_def", name="add", arguments='{"a": 1, "b": 1}'),
    ]
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert (response.input_tokens, response.output_tokens) == (1000, 500)
    assert response.total_tokens == 1500
    assert response.cost_usd == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1_000_000)

    (request,) = fake_openai.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer sk-test"
    body = request["body"]
    assert body["model"] == "gpt-4o-mini"
    assert body["max_tokens"] == 256
    assert body["messages"] == [SYSTEM.to_openai(), USER.to_openai()]
    assert body["tools"] == [ADD_SCHEMA]


def test_openai_model_sends_the_whole_conversation(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(
        200, completion(content="2 + 3 = 5", usage={"prompt_tokens": 10, "completion_tokens": 5})
    )
    history = [
        SYSTEM,
        USER,
        assistant(calls=[ToolCall(id="call_abc", name="add", arguments='{"a": 2, "b": 3}')]),
        ChatMessage(role="tool", tool_call_id="call_abc", content='{"result": 5}'),
    ]
    response = client(fake_openai).complete(history, [])
    assert response.content == "2 + 3 = 5"
    assert response.tool_calls == []
    body = fake_openai.requests[0]["body"]
    assert "tools" not in body  # no tools offered, none sent
    assert body["messages"][2]["tool_calls"] == [ADD_CALL]
    assert body["messages"][3] == {
        "role": "tool",
        "content": '{"result": 5}',
        "tool_call_id": "call_abc",
    }


def test_openai_model_unknown_model_costs_zero(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(
        200,
        completion(
            content="hi",
            model="local-llama",
            usage={"prompt_tokens": 100, "completion_tokens": 100},
        ),
    )
    response = client(fake_openai, model="local-llama").complete([USER], [])
    assert response.cost_usd == 0.0
    assert response.total_tokens == 200


def test_openai_model_without_usage_counts_zero_tokens(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(200, completion(content="hi"))
    response = client(fake_openai).complete([USER], [])
    assert (response.input_tokens, response.output_tokens, response.cost_usd) == (0, 0, 0.0)


def test_openai_model_retries_a_429_honouring_retry_after(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(429, error_body("slow down"), {"Retry-After": "0"})
    fake_openai.reply(
        200, completion(content="ok", usage={"prompt_tokens": 3, "completion_tokens": 1})
    )
    started = time.monotonic()
    response = client(fake_openai, max_attempts=3).complete([USER], [])
    elapsed = time.monotonic() - started
    assert response.content == "ok"
    assert len(fake_openai.requests) == 2
    # Retry-After: 0 means no backoff (the fallback would wait at least 0.5 s).
    assert fake_openai.requests[1]["at"] - fake_openai.requests[0]["at"] < 0.45
    assert elapsed < 2


def test_openai_model_gives_up_on_a_persistent_500(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(500, error_body("internal error"))
    with pytest.raises(ModelError) as info:
        client(fake_openai, max_attempts=2).complete([USER], [])
    assert len(fake_openai.requests) == 2
    message = str(info.value)
    assert "model 'gpt-4o-mini'" in message
    assert fake_openai.base_url in message
    assert "failed after 2 attempt(s)" in message
    assert "check the endpoint, key and rate limits" in message
    assert isinstance(info.value, TetherError)
    # Without Retry-After it backs off (jittered, from 0.5 s) between attempts.
    assert fake_openai.requests[1]["at"] - fake_openai.requests[0]["at"] >= 0.4


def test_openai_model_does_not_retry_a_client_error(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(400, error_body("bad request: unknown parameter"))
    with pytest.raises(ModelPermanentError, match="bad request: unknown parameter") as info:
        client(fake_openai, max_attempts=3).complete([USER], [])
    assert len(fake_openai.requests) == 1
    assert (info.value.status, info.value.kind, info.value.permanent) == (400, "permanent", True)
    assert "refused the request with HTTP 400" in str(info.value)
    assert "not retried" in str(info.value)


def test_openai_model_rejects_a_completion_without_choices(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(200, completion(choices=False))
    with pytest.raises(ModelError, match="returned no choices"):
        client(fake_openai).complete([USER], [])


def test_openai_model_estimate_reserves_the_output_cap() -> None:
    model = OpenAIModel("gpt-4o-mini", max_output_tokens=300)
    messages = [SYSTEM, USER]
    # Its prompt counted by gpt-4o-mini's tokenizer (tether.models.tokens).
    assert model.estimate_tokens(messages, [ADD_SCHEMA]) == (
        prompt_token_bound(messages, [ADD_SCHEMA], "gpt-4o-mini") + 300
    )
    assert model.name == "gpt-4o-mini"


# Retry-After handling ------------------------------------------------------------------


def _state_with(headers: dict[str, str] | None) -> Any:
    response = None if headers is None else SimpleNamespace(headers=headers)
    exc = SimpleNamespace(response=response)
    return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: exc))


def test_wait_retry_after_uses_the_header_capped() -> None:
    wait = wait_retry_after(wait_fixed(7), cap_s=60)
    assert wait(_state_with({"retry-after": "0"})) == 0.0
    assert wait(_state_with({"retry-after": "2.5"})) == 2.5
    assert wait(_state_with({"retry-after": "3600"})) == 60


def test_every_wait_between_model_attempts_stays_under_the_configured_cap() -> None:
    wait = OpenAIModel("m", retry_wait_max_s=3.0)._wait()
    for attempt in range(1, 12):
        state = _state_with({})
        state.attempt_number = attempt
        state.upcoming_sleep = 0
        assert 0 <= wait(state) <= 3.0
    assert wait(_state_with({"retry-after": "3600"})) == 3.0


def test_wait_retry_after_falls_back_without_a_usable_header() -> None:
    wait = wait_retry_after(wait_fixed(7))
    assert wait(_state_with({})) == 7
    assert wait(_state_with(None)) == 7  # e.g. a connection error has no response
    assert wait(_state_with({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 7
    assert wait(SimpleNamespace(outcome=None)) == 7


# typed errors against the fault server: what is retried, what falls back ---------------


class Counting:
    """A fallback model that answers and counts its calls."""

    name = "counting"
    system = "counting"
    billed_models = ()

    def __init__(self) -> None:
        self.calls = 0

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return 10

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ModelResponse:
        self.calls += 1
        return ModelResponse(content="from the fallback", model=self.name)


@pytest.fixture
def fault_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedOpenAIServer]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("TETHER_MODEL_FALLBACK_ON", raising=False)
    get_settings.cache_clear()
    with ScriptedOpenAIServer(from_turns([text("ok")] * 100), retry_after_s=0) as server:
        yield server
    get_settings.cache_clear()


def endpoint_model(server: ScriptedOpenAIServer, attempts: int = 2) -> OpenAIModel:
    return OpenAIModel("gpt-4o-mini", base_url=server.base_url, timeout_s=5, max_attempts=attempts)


@pytest.mark.parametrize(
    ("fault", "status", "advice"),
    [
        (Fault.bad_request, 400, "fix the request"),
        (Fault.unauthorized, 401, "TETHER_MODEL_API_KEY"),
        (Fault.not_found, 404, "TETHER_MODEL_NAME"),
    ],
)
def test_a_4xx_is_permanent_not_retried_and_not_fallen_back_on(
    fault_endpoint: ScriptedOpenAIServer, fault: Fault, status: int, advice: str
) -> None:
    fault_endpoint.schedule[:] = [fault]
    fallback = Counting()
    model = FallbackModel(endpoint_model(fault_endpoint, attempts=5), fallback)
    with pytest.raises(ModelPermanentError) as info:
        model.complete([USER], [])
    assert len(fault_endpoint.requests) == 1
    assert fallback.calls == 0
    error = info.value
    assert (error.status, error.kind, error.attempts) == (status, "permanent", 1)
    assert f"HTTP {status}" in str(error)
    assert advice in str(error)
    assert "the next model was not tried" in str(error)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault.request_timeout, "timeout"),
        (Fault.conflict, "transient"),
        (Fault.rate_limit, "rate_limited"),
        (Fault.server_error, "server_error"),
    ],
)
def test_408_409_429_and_5xx_are_retried(
    fault_endpoint: ScriptedOpenAIServer, fault: Fault, kind: str
) -> None:
    fault_endpoint.schedule[:] = [fault, None]
    response = endpoint_model(fault_endpoint).complete([USER], [])
    assert response.content == "ok"
    assert response.attempts == 2
    assert len(fault_endpoint.requests) == 2

    # Past its attempts, the error says which kind it was, and keeps the status.
    fault_endpoint.schedule[:] = [fault] * 2
    with pytest.raises(ModelTransientError) as info:
        endpoint_model(fault_endpoint).complete([USER], [])
    assert (info.value.kind, info.value.permanent, info.value.attempts) == (kind, False, 2)
    assert info.value.status == int(str(info.value).split("HTTP ")[1][:3])


def test_a_transient_failure_falls_back(fault_endpoint: ScriptedOpenAIServer) -> None:
    fault_endpoint.schedule[:] = [Fault.server_error] * 2
    fallback = Counting()
    response = FallbackModel(endpoint_model(fault_endpoint), fallback).complete([USER], [])
    assert response.content == "from the fallback"
    assert fallback.calls == 1
    assert response.attempts == 3


def test_what_the_fallback_falls_back_on_is_configurable(
    fault_endpoint: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parameter: fall back on a bad key too (the fallback uses another provider's key).
    fault_endpoint.schedule[:] = [Fault.unauthorized]
    fallback = Counting()
    model = FallbackModel(
        endpoint_model(fault_endpoint), fallback, fallback_on=["permanent", "server_error"]
    )
    assert model.complete([USER], []).content == "from the fallback"
    assert (len(fault_endpoint.requests), fallback.calls) == (1, 1)

    # The setting: fall back on rate limits only, so a 500 ends the call.
    monkeypatch.setenv("TETHER_MODEL_FALLBACK_ON", '["rate_limited"]')
    get_settings.cache_clear()
    fault_endpoint.schedule[:] = [Fault.server_error]
    fallback = Counting()
    with pytest.raises(ModelTransientError, match="server_error failure") as info:
        FallbackModel(endpoint_model(fault_endpoint, attempts=1), fallback).complete([USER], [])
    assert (info.value.kind, fallback.calls) == ("server_error", 0)


def test_an_unknown_kind_to_fall_back_on_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'server_errors'.*TETHER_MODEL_FALLBACK_ON"):
        FallbackModel(Counting(), Counting(), fallback_on=["server_errors"])


def test_a_permanent_failure_of_the_last_model_is_permanent(
    fault_endpoint: ScriptedOpenAIServer,
) -> None:
    fault_endpoint.schedule[:] = [Fault.server_error, Fault.not_found]
    model = FallbackModel(
        endpoint_model(fault_endpoint, attempts=1), endpoint_model(fault_endpoint, attempts=3)
    )
    with pytest.raises(ModelPermanentError, match="every model failed") as info:
        model.complete([USER], [])
    assert (info.value.status, info.value.attempts) == (404, 2)


def test_the_output_cap_is_sent_and_comes_from_the_settings(
    fault_endpoint: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_MODEL_MAX_OUTPUT_TOKENS", "77")
    get_settings.cache_clear()
    model = endpoint_model(fault_endpoint)
    model.complete([USER], [])
    assert fault_endpoint.requests[-1]["max_tokens"] == 77
    assert model.estimate_tokens([USER], []) == prompt_token_bound([USER], [], model.name) + 77

    reasoning = OpenAIModel(
        "o4-mini", base_url=fault_endpoint.base_url, output_cap_field="max_completion_tokens"
    )
    reasoning.complete([USER], [])
    assert fault_endpoint.requests[-1]["max_completion_tokens"] == 77
    assert "max_tokens" not in fault_endpoint.requests[-1]
