"""Tools: typed Python functions with pydantic input and output schemas.

The schemas come from the function's signature, so the model sees exactly
what the function accepts, and every call the model makes is validated before
anything runs.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from tether.errors import (
    InvalidToolCallError,
    ToolDefinitionError,
    ToolTimeoutError,
    TransientToolError,
    validation_problems,
)
from tether.guardrails.verdict import Guardrail


@dataclass(frozen=True)
class ToolContext:
    """Handed to a tool that declares a parameter of this type; not part of its schema.

    ``action_id`` is stable across redeliveries: use it as the idempotency key
    for side effects in other systems.
    """

    run_id: str
    action_id: str
    agent: str
    step: int


@dataclass(frozen=True)
class RetryPolicy:
    """How the executor retries a tool's transient failures, with jittered backoff.

    A non-idempotent tool is retried only on TransientToolError, which promises
    that nothing happened; anything else could have half-done its side effect.
    """

    max_attempts: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    retry_on: tuple[type[BaseException], ...] = (
        TransientToolError,
        ConnectionError,
        TimeoutError,
        ToolTimeoutError,
    )


NO_UNSAFE_RETRY = RetryPolicy(retry_on=(TransientToolError,))


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    fn: Callable[..., Any]
    input_model: type[BaseModel]
    output_adapter: TypeAdapter[Any]
    context_param: str | None
    idempotent: bool = True
    requires_approval: bool = False
    timeout_s: float = 30.0
    retry: RetryPolicy = RetryPolicy()
    # Calls per second across every executor (tether.store.ratelimits); a call over it
    # waits its turn off the worker, rescheduled.
    rate_limit_per_s: float | None = None
    # In a shadow run (tether.rollout.shadow) a tool runs for real only if it is
    # safe_in_shadow (a read); else dry_run, called like the tool, simulates its
    # result; a tool with neither is not run at all.
    dry_run: Callable[..., Any] | None = None
    safe_in_shadow: bool = False
    # Its calls and results stay in a thread's history for the thread's later runs
    # (tether.memory.threads).
    keep_in_thread: bool = False
    # Guardrails (tether.guardrails) on its validated arguments, before the call is
    # published, and on its result, before it is stored and the model reads it.
    argument_guardrails: Sequence[Guardrail] = ()
    result_guardrails: Sequence[Guardrail] = ()

    def openai_schema(self) -> dict[str, Any]:
        """The tool as the OpenAI API describes it; built once, treat it as read-only."""
        return self._openai_schema

    @functools.cached_property
    def _openai_schema(self) -> dict[str, Any]:
        # Generating a JSON schema costs more than the rest of a planning step.
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.input_model.model_json_schema(),
            },
        }

    def validate_call(self, raw_arguments: str | dict[str, Any]) -> dict[str, Any]:
        """The call's arguments, validated; raises InvalidToolCallError with what to fix."""
        if isinstance(raw_arguments, str):
            try:
                parsed = json.loads(raw_arguments or "{}")
            except json.JSONDecodeError as exc:
                raise InvalidToolCallError(
                    f"arguments for tool {self.name!r} are not valid JSON ({exc.msg} at "
                    f"position {exc.pos}); send a JSON object matching the tool's schema"
                ) from exc
        else:
            parsed = raw_arguments
        if not isinstance(parsed, dict):
            raise InvalidToolCallError(
                f"arguments for tool {self.name!r} must be a JSON object, got "
                f"{type(parsed).__name__}; send an object matching the tool's schema"
            )
        try:
            validated = self.input_model.model_validate(parsed)
        except ValidationError as exc:
            raise InvalidToolCallError(
                f"arguments for tool {self.name!r} failed validation: "
                f"{validation_problems(exc)}; "
                "correct them and call the tool again"
            ) from exc
        return validated.model_dump(mode="json")

    def invoke(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """Run the tool within its timeout; returns its output as JSON-ready data."""
        future = _tool_threads().submit(self.fn, **self._kwargs(arguments, context))
        try:
            output = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError as exc:
            # The call keeps its thread; we stop waiting, we cannot kill it.
            raise ToolTimeoutError(self.name, self.timeout_s) from exc
        return self.output_adapter.dump_python(
            self.output_adapter.validate_python(output), mode="json"
        )

    def simulate(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        """The dry_run's result for these arguments, validated as the tool's own output."""
        if self.dry_run is None:
            raise ToolDefinitionError(f"tool {self.name!r} declares no dry_run to simulate it")
        return self.output_adapter.dump_python(
            self.output_adapter.validate_python(self.dry_run(**self._kwargs(arguments, context))),
            mode="json",
        )

    def _kwargs(self, arguments: dict[str, Any], context: ToolContext) -> dict[str, Any]:
        """What the function (or its dry_run) is called with: the validated arguments,
        as the parameters' own types, and the context where it takes one."""
        validated = self.input_model.model_validate(arguments)
        kwargs = {name: getattr(validated, name) for name in type(validated).model_fields}
        if self.context_param is not None:
            kwargs[self.context_param] = context
        return kwargs


# Tool calls run on pooled threads (a thread per call cost more than a no-op tool);
# the pool is wide so that calls stuck past their timeout cannot starve the rest.
TOOL_THREADS = 64
_pool: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _tool_threads() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        # A pool inherited through fork has no threads behind it: each process makes its own.
        if _pool is None or _pool[0] != os.getpid():
            _pool = (
                os.getpid(),
                concurrent.futures.ThreadPoolExecutor(TOOL_THREADS, thread_name_prefix="tool"),
            )
        return _pool[1]


class ToolFlags(TypedDict, total=False):
    """The flags ``@tool(...)`` sets on a Tool; each left out keeps Tool's default."""

    idempotent: bool
    requires_approval: bool
    timeout_s: float
    rate_limit_per_s: float | None
    dry_run: Callable[..., Any] | None
    safe_in_shadow: bool
    keep_in_thread: bool
    argument_guardrails: Sequence[Guardrail]
    result_guardrails: Sequence[Guardrail]


class ToolOptions(ToolFlags, total=False):
    """What ``@tool(...)`` takes: the flags, a ``name`` other than the function's, and a
    ``retry`` policy other than the default for the tool's idempotence."""

    name: str | None
    retry: RetryPolicy | None


def _build_tool(
    fn: Callable[..., Any],
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    **flags: Unpack[ToolFlags],
) -> Tool:
    tool_name = name or fn.__name__
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolDefinitionError(f"cannot read type hints of tool {tool_name!r}: {exc}") from exc
    if "return" not in hints:
        raise ToolDefinitionError(
            f"tool {tool_name!r} has no return annotation; annotate it so its output can be validated"
        )
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool {tool_name!r} takes *{param.name}; tools need named, typed parameters"
            )
        if param.name not in hints:
            raise ToolDefinitionError(
                f"parameter {param.name!r} of tool {tool_name!r} has no type hint; add one"
            )
        if hints[param.name] is ToolContext:
            context_param = param.name
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    input_model = create_model(
        f"{tool_name}_input", __config__=ConfigDict(extra="forbid"), **fields
    )
    description = inspect.cleandoc(fn.__doc__ or "").strip() or tool_name
    per_s = flags.get("rate_limit_per_s")
    if per_s is not None and not per_s > 0:
        raise ToolDefinitionError(
            f"tool {tool_name!r}: rate_limit_per_s must be above 0 (calls a second), got {per_s}"
        )
    return Tool(
        name=tool_name,
        description=description,
        fn=fn,
        input_model=input_model,
        output_adapter=TypeAdapter(hints["return"]),
        context_param=context_param,
        retry=retry or (RetryPolicy() if flags.get("idempotent", True) else NO_UNSAFE_RETRY),
        **flags,
    )


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(**options: Unpack[ToolOptions]) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None, /, **options: Unpack[ToolOptions]
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function into a Tool: ``@tool`` or ``@tool(requires_approval=True)``.

    The options (ToolOptions) default as Tool's fields do. ``retry`` defaults to three
    attempts on transient errors for idempotent tools, and to retrying only
    TransientToolError for the others. ``dry_run`` (called with the tool's arguments)
    and ``safe_in_shadow`` say how a shadow run may call it; see tether.rollout.shadow.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return _build_tool(f, **options)

    return wrap(fn) if fn is not None else wrap
