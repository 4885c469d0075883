"""A model client for any OpenAI-compatible chat completions endpoint."""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from tether.errors import ModelError
from tether.models.base import ModelResponse
from tether.models.prices import cost_usd, estimate_tokens
from tether.state import ChatMessage, ToolCall

TRANSIENT = (
    openai.RateLimitError,
    openai.APIConnectionError,  # includes APITimeoutError
    openai.InternalServerError,
    openai.APIResponseValidationError,
    ValueError,  # a body cut short: json.JSONDecodeError
)


class stop_at_deadline(stop_base):
    """Stop retrying once the run's wall-time budget is spent."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.deadline is not None and time.time() >= self.deadline


class wait_retry_after(wait_base):
    """Wait what the server asked for in Retry-After, else fall back to jittered backoff."""

    def __init__(self, fallback: wait_base, cap_s: float = 60.0) -> None:
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        response = getattr(exc, "response", None)
        header = response.headers.get("retry-after") if response is not None else None
        if header:
            try:
                seconds = float(header)
            except ValueError:
                seconds = -1.0
            # A negative, NaN or absurd header is the server's bug; fall back rather than crash.
            if math.isfinite(seconds) and seconds >= 0:
                return min(seconds, self.cap_s)
        return float(self.fallback(retry_state))


class OpenAIModel:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str = "unset",
        timeout_s: float = 60.0,
        max_attempts: int = 3,
        max_output_tokens: int = 1024,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.max_output_tokens = max_output_tokens
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model

    def _openai(self) -> openai.OpenAI:
        # Created on first use so each forked worker process opens its own connections.
        with self._lock:
            if self._client is None:
                self._client = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self.api_key,
                    timeout=self.timeout_s,
                    max_retries=0,
                )
            return self._client

    def _create(self, request: dict[str, Any]) -> ChatCompletion:
        # chat.completions.create first walks the request through the SDK's TypedDict
        # transform, a third of the client's CPU per call; the request is plain JSON
        # built here, so it goes straight to the same client's post (same auth, errors,
        # parsing), which lets a planner process hold more model calls in flight.
        return self._openai().post("/chat/completions", body=request, cast_to=ChatCompletion)

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        prompt = json.dumps([m.to_openai() for m in messages]) + json.dumps(tools)
        return estimate_tokens(prompt) + self.max_output_tokens

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
    ) -> ModelResponse:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [m.to_openai() for m in messages],
            "max_tokens": self.max_output_tokens,
        }
        if tools:
            request["tools"] = tools
        retrying = Retrying(
            retry=retry_if_exception_type(TRANSIENT),
            wait=wait_retry_after(wait_exponential(multiplier=0.5, max=20) + wait_random(0, 0.5)),
            stop=stop_after_attempt(self.max_attempts) | stop_at_deadline(deadline),
            reraise=True,
        )
        try:
            completion = retrying(self._create, request)
        except (openai.OpenAIError, ValueError) as exc:
            attempts = int(retrying.statistics.get("attempt_number", 1))
            raise ModelError(
                f"model {self.model!r} at {self.base_url or 'the OpenAI API'} failed after "
                f"{attempts} attempt(s): {type(exc).__name__}: {exc}; check the endpoint, "
                "key and rate limits",
                attempts=attempts,
            ) from exc
        attempts = int(retrying.statistics.get("attempt_number", 1))
        if not completion.choices:
            raise ModelError(
                f"model {self.model!r} returned no choices; the endpoint is misbehaving",
                attempts=attempts,
            )
        message = completion.choices[0].message
        calls = [
            ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments or "")
            for call in (message.tool_calls or [])
            if call.type == "function"
        ]
        usage = completion.usage
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
        return ModelResponse(
            content=message.content,
            tool_calls=calls,
            model=completion.model or self.model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd(self.model, input_tokens, output_tokens),
            attempts=attempts,
        )
