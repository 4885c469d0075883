"""A model client for any OpenAI-compatible chat completions endpoint."""

from __future__ import annotations

import math
import threading
import time
from contextvars import ContextVar
from typing import Any

import openai
from openai.types.chat import ChatCompletion
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from tether.config import get_settings
from tether.errors import ModelError, ModelPermanentError, ModelTransientError
from tether.models.base import ModelResponse, ResponseFormat
from tether.models.output_cap import OutputCapped
from tether.models.prices import cost_usd
from tether.store.state import ChatMessage, ToolCall

# What to fix when the endpoint refuses a request, by HTTP status.
_PERMANENT_ADVICE = {
    401: "check the API key (TETHER_MODEL_API_KEY)",
    403: "check the API key's permissions for this model (TETHER_MODEL_API_KEY)",
    404: "check the model name (TETHER_MODEL_NAME) and the endpoint (TETHER_MODEL_BASE_URL)",
}


def failure_kind(exc: BaseException) -> str | None:
    """Which kind of model failure ``exc`` is (errors.MODEL_FAILURE_KINDS); None: not one at all."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return "rate_limited"
        if status == 408:
            return "timeout"
        if status >= 500:
            return "server_error"
        # 409 is a conflict on the provider's side (OpenAI's SDK retries it too);
        # every other 4xx is this request's own fault and fails the same way again.
        return "transient" if status == 409 else "permanent"
    # A dropped connection, or a body cut short (json.JSONDecodeError) or malformed.
    if isinstance(exc, openai.APIConnectionError | openai.APIResponseValidationError | ValueError):
        return "transient"
    if isinstance(exc, openai.OpenAIError):
        return "permanent"  # raised before any request: the client is misconfigured
    return None


# Set by the planner around its model calls: a 429 that says when to come back is handed
# back at once (ModelError.retry_after_s) for every worker to pause on together
# (tether.planner.ratelimited), instead of each retrying it on its own.
HAND_BACK_429: ContextVar[bool] = ContextVar("hand_back_429", default=False)


def retry_after_s(exc: BaseException) -> float | None:
    """The seconds a 429's Retry-After asks for; None where there is no usable one."""
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        seconds = float(header) if header else -1.0
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _retryable(exc: BaseException) -> bool:
    kind = failure_kind(exc)
    if kind == "rate_limited" and HAND_BACK_429.get() and retry_after_s(exc) is not None:
        return False
    return kind is not None and kind != "permanent"


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
        # A negative, NaN or absurd header is the server's bug: fall back rather than crash.
        seconds = retry_after_s(exc) if exc is not None else None
        if seconds is not None:
            return min(seconds, self.cap_s)
        return float(self.fallback(retry_state))


class OpenAIModel(OutputCapped):
    # Any OpenAI-compatible endpoint speaks the openai API; the GenAI semconv names it so.
    system = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str = "unset",
        timeout_s: float = 60.0,
        max_attempts: int = 3,
        max_output_tokens: int | None = None,
        output_cap_field: str = "max_tokens",
        retry_wait_max_s: float | None = None,
    ) -> None:
        """``max_output_tokens`` defaults to TETHER_MODEL_MAX_OUTPUT_TOKENS; it is sent as
        ``output_cap_field``, which OpenAI's reasoning models want as "max_completion_tokens".
        ``retry_wait_max_s`` (default TETHER_MODEL_RETRY_WAIT_MAX_S) caps each wait between
        attempts, Retry-After and jitter included, so the whole schedule fits the soft
        time limit the settings check it against."""
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._max_output_tokens = max_output_tokens
        self.output_cap_field = output_cap_field
        self._retry_wait_max_s = retry_wait_max_s
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.model

    @property
    def billed_models(self) -> tuple[str, ...]:
        return (self.model,)

    @property
    def tokenizer_model(self) -> str:
        # Its tokenizer where the name is OpenAI's (tiktoken's map); any other keeps the byte bound.
        return self.model

    def _wait(self) -> wait_base:
        cap = self._retry_wait_max_s
        if cap is None:
            cap = get_settings().model_retry_wait_max_s
        jitter = min(0.5, cap / 2)
        backoff = wait_exponential(multiplier=0.5, max=cap - jitter) + wait_random(0, jitter)
        return wait_retry_after(backoff, cap_s=cap)

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

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: ResponseFormat | None = None,
    ) -> ModelResponse:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [m.to_openai() for m in messages],
            self.output_cap_field: self.max_output_tokens,
        }
        if tools:
            request["tools"] = tools
        if response_format is not None:
            request["response_format"] = response_format
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            wait=self._wait(),
            stop=stop_after_attempt(self.max_attempts) | stop_at_deadline(deadline),
            reraise=True,
        )
        try:
            completion = retrying(self._create, request)
        except (openai.OpenAIError, ValueError) as exc:
            raise self._error(exc, int(retrying.statistics.get("attempt_number", 1))) from exc
        attempts = int(retrying.statistics.get("attempt_number", 1))
        if not completion.choices:
            raise ModelTransientError(
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

    def _error(self, exc: BaseException, attempts: int) -> ModelError:
        where = f"model {self.model!r} at {self.base_url or 'the OpenAI API'}"
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        kind = failure_kind(exc) or "transient"
        if kind == "permanent":
            advice = _PERMANENT_ADVICE.get(
                status or 0,
                "fix the request or the client's configuration (model name, parameters, "
                "prompt length)",
            )
            return ModelPermanentError(
                f"{where} refused the request"
                + (f" with HTTP {status}" if status else "")
                + f": {type(exc).__name__}: {exc}; not retried, since it would fail the same "
                f"way again: {advice}",
                attempts=attempts,
                status=status,
            )
        error = ModelTransientError(
            f"{where} failed after {attempts} attempt(s) ({kind}"
            + (f", HTTP {status}" if status else "")
            + f"): {type(exc).__name__}: {exc}; check the endpoint, key and rate limits",
            attempts=attempts,
            status=status,
            kind=kind,
        )
        if kind == "rate_limited":
            error.retry_after_s = retry_after_s(exc)
        return error
