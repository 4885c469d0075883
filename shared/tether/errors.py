"""One error hierarchy: every Tether failure is a TetherError.

Each message says what happened, to what, and what to do about it.
"""

from __future__ import annotations


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


class UnknownEscalationError(TetherError):
    def __init__(self, escalation_id: str) -> None:
        super().__init__(
            f"escalation {escalation_id!r} does not exist; list pending ones with `tether escalations list`"
        )
        self.escalation_id = escalation_id


class EscalationClosedError(TetherError):
    def __init__(self, escalation_id: str, status: str) -> None:
        super().__init__(
            f"escalation {escalation_id!r} is already {status}; a decision is recorded once and cannot be changed"
        )


class InvalidToolCallError(TetherError):
    """The model asked for a tool call that cannot be executed as given."""


class ToolDefinitionError(TetherError):
    """A function cannot be turned into a tool (missing hints, bad signature)."""


class ToolTimeoutError(TetherError):
    def __init__(self, tool: str, timeout_s: float) -> None:
        super().__init__(
            f"tool {tool!r} did not finish within {timeout_s:g}s; raise its timeout or make it faster"
        )


class ModelError(TetherError):
    """The model endpoint failed after its retries (and fallbacks)."""

    def __init__(self, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.attempts = attempts


class TransientToolError(TetherError):
    """Raised by a tool when nothing happened and trying again later may work.

    It is the one error on which a non-idempotent tool is retried: raising it
    promises that the side effect did not take place.
    """


class ActionInFlightError(TetherError):
    def __init__(self, action_id: str, retry_after_s: float) -> None:
        super().__init__(
            f"action {action_id} is running on another worker; this delivery waits "
            f"{retry_after_s:.0f}s and looks again"
        )
        self.retry_after_s = retry_after_s


class StaleStateError(TetherError):
    """A run-state commit lost the race: someone else committed first."""


class BudgetExhaustedError(TetherError):
    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"run {run_id!r} exhausted its budget: {reason}")
        self.reason = reason


class PayloadTooLargeError(TetherError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"event payload is {size} bytes, over the {limit}-byte cap (TETHER_MAX_EVENT_BYTES); "
            "send a reference to large data instead of the data"
        )
