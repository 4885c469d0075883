"""One error hierarchy: every Tether failure is a TetherError.

Each message says what happened, to what, and what to do about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def validation_problems(exc: ValidationError, *, whole: str = "<root>") -> str:
    """Every problem pydantic found, each with the field it concerns ("a.b: Field
    required; c: ..."), not the first alone; ``whole`` names the value itself."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors())


class TetherError(Exception):
    """Root of every error Tether raises on purpose."""


class ConfigError(TetherError):
    """The runtime is configured in a way it cannot work with."""


class UnknownAgentError(TetherError):
    def __init__(self, agent: str, known: list[str]) -> None:
        super().__init__(
            f"agent {agent!r} is not registered on this worker (known: {', '.join(known) or 'none'}); "
            "add its module to TETHER_AGENT_MODULES or fix the event's agent name"
        )
        self.agent = agent


class UnknownRunError(TetherError):
    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"run {run_id!r} does not exist in the run store; check the id with `tether runs list`"
        )
        self.run_id = run_id


class RunNotEndedError(TetherError):
    """A run that has not ended cannot be retried."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"run {run_id!r} is still {status}: retry it once it has ended, or cancel it "
            "first (`tether runs cancel`)"
        )
        self.run_id = run_id


class RunResultError(TetherError):
    """A run's result cannot be given as asked (tether.client.result): the run has not
    succeeded, or its output is not of the type asked for."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(f"run {run_id!r}: {message}")
        self.run_id = run_id


class ForkError(TetherError):
    """A run cannot be forked from the step asked for (no such run, step or log)."""


class EventRejectedError(TetherError):
    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(
            f"event {event_id!r} was rejected and never became a run: {reason}; "
            "`tether runs rejected` lists every refusal"
        )
        self.event_id = event_id
        self.reason = reason


class UnknownEscalationError(TetherError):
    def __init__(self, escalation_id: str) -> None:
        super().__init__(
            f"escalation {escalation_id!r} does not exist; list pending ones with `tether escalations list`"
        )
        self.escalation_id = escalation_id


class EscalationClosedError(TetherError):
    """A decision for an escalation that no longer takes one: ``status`` is decided,
    closed (its run ended) or expired; ``why`` says what happened and what to do."""

    def __init__(self, escalation_id: str, status: str, why: str | None = None) -> None:
        self.escalation_id = escalation_id
        self.status = status
        super().__init__(
            f"escalation {escalation_id!r} is already {status}"
            + (f": {why}" if why else "; a decision is recorded once and cannot be changed")
        )


class DecisionRefusedError(TetherError):
    """A decision that cannot apply to its escalation (a verdict it does not take, an
    extension past the agent's ceiling or already spent by someone else)."""


class InvalidToolCallError(TetherError):
    """The model asked for a tool call that cannot be executed as given."""


class ToolDefinitionError(TetherError):
    """A function cannot be turned into a tool (missing hints, bad signature)."""


class ToolTimeoutError(TetherError):
    def __init__(self, tool: str, timeout_s: float) -> None:
        super().__init__(
            f"tool {tool!r} did not finish within {timeout_s:g}s; raise its timeout or make it faster"
        )


# What went wrong with a model call, as TETHER_MODEL_FALLBACK_ON names it. Every
# kind but "permanent" may work when tried again later or on another endpoint.
MODEL_FAILURE_KINDS = ("transient", "rate_limited", "timeout", "server_error", "permanent")


class ModelError(TetherError):
    """The model endpoint failed after its retries (and fallbacks).

    ``status`` is the HTTP status of the last failed attempt, None where there
    was no HTTP answer (connection refused, timeout, a body cut short).
    ``kind`` is one of MODEL_FAILURE_KINDS; raise the subclasses rather than
    this class, which counts as ``transient`` for clients written before them.
    """

    kind: str = "transient"
    # A 429's Retry-After, where the endpoint said how long to wait (tether.store.ratelimits).
    retry_after_s: float | None = None

    def __init__(
        self, message: str, *, attempts: int = 1, status: int | None = None, kind: str | None = None
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status
        if kind is not None:
            if kind not in MODEL_FAILURE_KINDS:
                raise ValueError(
                    f"unknown model failure kind {kind!r}; use one of {MODEL_FAILURE_KINDS}"
                )
            self.kind = kind

    @property
    def permanent(self) -> bool:
        """The request itself is wrong: trying it again, here or elsewhere, cannot help."""
        return self.kind == "permanent"


class ModelTransientError(ModelError):
    """Rate limited, timed out, a 5xx, a dropped connection or a garbled answer: later may work."""

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 1,
        status: int | None = None,
        kind: str = "transient",
    ) -> None:
        if kind == "permanent":
            raise ValueError("a permanent failure is a ModelPermanentError")
        super().__init__(message, attempts=attempts, status=status, kind=kind)


class ModelPermanentError(ModelError):
    """The endpoint refused the request itself (a 4xx such as a bad key or unknown model)."""

    kind = "permanent"

    def __init__(self, message: str, *, attempts: int = 1, status: int | None = None) -> None:
        super().__init__(message, attempts=attempts, status=status, kind="permanent")


class UnknownModelPriceError(TetherError):
    def __init__(self, models: list[str], max_cost_usd: float) -> None:
        names = ", ".join(repr(m) for m in models)
        example = "{" + ", ".join(f'"{m}": [0.5, 1.5]' for m in models) + "}"
        super().__init__(
            f"no price is known for model {names}, so the budget's max_cost_usd="
            f"{max_cost_usd:g} cannot be enforced; set TETHER_MODEL_PRICES to its USD per "
            f"million input and output tokens, e.g. TETHER_MODEL_PRICES='{example}', "
            "or drop max_cost_usd from the agent's and the event's budget"
        )
        self.models = models


class TransientToolError(TetherError):
    """Raised by a tool when nothing happened and trying again later may work.

    It is the one error on which a non-idempotent tool is retried: raising it
    promises that the side effect did not take place.
    """


class ActionInFlightError(TetherError):
    def __init__(self, action_id: str, retry_after_s: float) -> None:
        super().__init__(
            f"action {action_id} is running on another worker; this delivery waits "
            f"{retry_after_s:.1f}s and looks again"
        )
        self.retry_after_s = retry_after_s


class StaleStateError(TetherError):
    """A run-state commit lost the race: someone else committed first."""


class BudgetExhaustedError(TetherError):
    def __init__(self, run_id: str, reason: str, limit: str | None = None) -> None:
        super().__init__(f"run {run_id!r} exhausted its budget: {reason}")
        self.reason = reason
        # steps, tool_calls, tokens, cost_usd or wall_s; None when no budget was open.
        self.limit = limit


class PayloadTooLargeError(TetherError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"event payload is {size} bytes, over the {limit}-byte cap (TETHER_MAX_EVENT_BYTES); "
            "send a reference to large data instead of the data"
        )
