"""A model that hands the call to the next one when the current one fails."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tether.config import get_settings
from tether.errors import (
    MODEL_FAILURE_KINDS,
    ConfigError,
    ModelError,
    ModelPermanentError,
    ModelTransientError,
)
from tether.models.base import ModelClient, ModelResponse, ResponseFormat
from tether.store.state import ChatMessage


class FallbackModel:
    """Try each model in order; each keeps its own retries, the first answer wins.

    Only failures of a kind in ``fallback_on`` (default: TETHER_MODEL_FALLBACK_ON)
    go on to the next model; any other ends the call with that model's error.
    """

    def __init__(
        self,
        primary: ModelClient,
        *fallbacks: ModelClient,
        fallback_on: Iterable[str] | None = None,
    ) -> None:
        if not fallbacks:
            raise ValueError("FallbackModel needs at least one fallback model")
        self.models = [primary, *fallbacks]
        kinds = list(fallback_on if fallback_on is not None else get_settings().model_fallback_on)
        unknown = sorted(set(kinds) - set(MODEL_FAILURE_KINDS))
        if unknown:
            raise ConfigError(
                f"unknown model failure kind(s) {unknown} to fall back on "
                f"(TETHER_MODEL_FALLBACK_ON or fallback_on); use any of {list(MODEL_FAILURE_KINDS)}"
            )
        self.fallback_on = frozenset(kinds)

    @property
    def name(self) -> str:
        return "fallback(" + ", ".join(m.name for m in self.models) + ")"

    @property
    def system(self) -> str:
        return self.models[0].system

    @property
    def billed_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for m in self.models for n in m.billed_models))

    def estimate_tokens(self, messages: list[ChatMessage], tools: list[dict[str, Any]]) -> int:
        return max(m.estimate_tokens(messages, tools) for m in self.models)

    def complete(
        self,
        messages: list[ChatMessage],
        tools: list[dict[str, Any]],
        *,
        deadline: float | None = None,
        response_format: ResponseFormat | None = None,
    ) -> ModelResponse:
        failures: list[str] = []
        attempts = 0
        last: ModelError | None = None
        for model in self.models:
            try:
                response = model.complete(
                    messages, tools, deadline=deadline, response_format=response_format
                )
            except ModelError as exc:
                failures.append(f"{model.name}: {exc}")
                attempts += exc.attempts
                last = exc
                if exc.kind not in self.fallback_on:
                    break
                continue
            return response.model_copy(update={"attempts": attempts + response.attempts})
        assert last is not None  # the loop ran at least once and did not return
        if len(failures) < len(self.models):
            message = (
                f"{self.models[len(failures) - 1].name} failed with a {last.kind} failure, which "
                f"no model falls back on (TETHER_MODEL_FALLBACK_ON: {sorted(self.fallback_on)}), "
                "so the next model was not tried: " + " | ".join(failures)
            )
        else:
            message = "every model failed: " + " | ".join(failures)
        # The failure that ended the call decides the run's fate, so the error keeps its kind.
        if last.permanent:
            raise ModelPermanentError(message, attempts=attempts, status=last.status)
        error = ModelTransientError(message, attempts=attempts, status=last.status, kind=last.kind)
        # A 429's Retry-After, for the planner to pause the endpoint on (tether.planner.ratelimited).
        error.retry_after_s = last.retry_after_s
        raise error
