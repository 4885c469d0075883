"""Evaluating agents through the same queues as production: scenarios, judge, suites."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.evaluation.runner import run_scenarios

__all__ = ["run_scenarios"]


def __getattr__(name: str) -> Any:
    # Lazy: a worker imports tether.evaluation.harness when it resolves an eval: agent
    # (the variant's entry point), and must not pull in the runner (and the client) with it.
    if name == "run_scenarios":
        from tether.evaluation.runner import run_scenarios

        return run_scenarios
    raise AttributeError(f"module 'tether.evaluation' has no attribute {name!r}")
