"""A local OpenAI-compatible chat completions server that answers from a script.

Tests point the real openai client (and so OpenAIModel) at it, so the whole
HTTP path is exercised without a network. The script is the same kind the
scripted model takes: the conversation in, the next turn out. It injects the
faults real endpoints have: 429 with Retry-After, 500, answers slower than the
client's timeout, bodies cut short, malformed tool calls, and the other HTTP
statuses (400, 401, 404, 408, 409), either on a schedule (one entry per request)
or at random with a seed. Given ``requests_per_window`` or ``tokens_per_window``, it
also keeps a provider's limits, answering 429 with Retry-After over them.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tether.models.prices import typical_tokens
from tether.models.scripted import Script, answering
from tether.store.state import ChatMessage, ToolCall


class Fault(StrEnum):
    rate_limit = "rate_limit"  # 429 with Retry-After
    server_error = "server_error"  # 500
    slow = "slow"  # answers after slow_s, past the client's timeout
    truncated = "truncated"  # a 200 whose JSON body is cut short
    invalid_arguments = "invalid_arguments"  # tool call arguments that are not JSON
    unknown_tool = "unknown_tool"  # a tool call naming a tool that does not exist
    bad_request = "bad_request"  # 400
    unauthorized = "unauthorized"  # 401
    not_found = "not_found"  # 404: no such model
    request_timeout = "request_timeout"  # 408
    conflict = "conflict"  # 409


TRANSPORT_FAULTS = (Fault.rate_limit, Fault.server_error, Fault.slow, Fault.truncated)
# The statuses a status fault answers with, and the error body's type.
STATUS_FAULTS: dict[Fault, tuple[int, str]] = {
    Fault.bad_request: (400, "invalid_request_error"),
    Fault.unauthorized: (401, "authentication_error"),
    Fault.not_found: (404, "not_found_error"),
    Fault.request_timeout: (408, "timeout_error"),
    Fault.conflict: (409, "conflict_error"),
}
# Drawn at random by default: what a healthy endpoint has now and then. A status
# fault is scheduled by the test that wants it (a random 401 would fail runs for good).
RANDOM_FAULTS = tuple(f for f in Fault if f not in STATUS_FAULTS)


def _parse_messages(raw: list[dict[str, Any]]) -> list[ChatMessage]:
    messages = []
    for m in raw:
        calls = [
            ToolCall(id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"])
            for c in m.get("tool_calls") or []
        ]
        messages.append(
            ChatMessage(
                role=m["role"],
                content=m.get("content"),
                tool_calls=calls or None,
                tool_call_id=m.get("tool_call_id"),
            )
        )
    return messages


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def response_format_problem(response_format: Any) -> str | None:
    """Why an endpoint would refuse this ``response_format`` with a 400, as OpenAI's does;
    None where it is well formed (or absent)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("text", "json_object"):
        return None
    if kind != "json_schema":
        return f"response_format.type must be text, json_object or json_schema, got {kind!r}"
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not _SCHEMA_NAME.match(str(spec.get("name", ""))):
        return "response_format.json_schema.name must be 1-64 letters, digits, _ or -"
    if not isinstance(spec.get("schema"), dict):
        return "response_format.json_schema.schema must be a JSON schema object"
    if not isinstance(spec.get("strict", False), bool):
        return "response_format.json_schema.strict must be a boolean"
    return None


class ScriptedOpenAIServer:
    def __init__(
        self,
        script: Script,
        *,
        latency_s: float = 0.0,
        schedule: list[Fault | None] | None = None,
        fault_rate: float = 0.0,
        faults: tuple[Fault, ...] = RANDOM_FAULTS,
        seed: int = 0,
        retry_after_s: float = 0.2,
        slow_s: float = 3.0,
        requests_per_window: int | None = None,
        tokens_per_window: int | None = None,
        window_s: float = 60.0,
    ) -> None:
        self.script = script
        self.latency_s = latency_s
        self.schedule = list(schedule or [])
        self.fault_rate = fault_rate
        self.faults = faults
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.requests: list[dict[str, Any]] = []
        self.injected: list[Fault] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        # A provider's limits: requests and tokens per ``window_s`` (per minute at 60),
        # replenished continuously as OpenAI's are; over them, 429 with Retry-After.
        self._limits = _Buckets(requests_per_window, tokens_per_window, window_s)
        self.limited = 0  # 429s answered for the limits
        self.served: list[float] = []  # when each completion was answered (time.time())
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def next_fault(self) -> Fault | None:
        """The fault for the next request: the schedule first, then chance."""
        with self._lock:
            if self.schedule:
                fault = self.schedule.pop(0)
            elif self.fault_rate and self._random.random() < self.fault_rate:
                fault = self._random.choice(self.faults)
            else:
                fault = None
            if fault is not None:
                self.injected.append(fault)
            return fault

    def completion(self, request: dict[str, Any], fault: Fault | None = None) -> dict[str, Any]:
        messages = _parse_messages(request.get("messages", []))
        # The script reads the request's response_format as a real model heeds it.
        with answering(request.get("response_format")):
            turn = self.script(messages)
        calls: list[dict[str, Any]] = [
            {
                "id": call.id
                if call.id != f"call_{call.name}"
                else f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in turn.tool_calls
        ]
        if fault == Fault.invalid_arguments:
            calls = calls or [{"id": "call_bad", "type": "function", "function": {"name": "x"}}]
            calls[0]["function"]["arguments"] = '{"a": 1,'
        elif fault == Fault.unknown_tool:
            calls = calls or [
                {"id": "call_bad", "type": "function", "function": {"arguments": "{}"}}
            ]
            calls[0]["function"]["name"] = "no_such_tool"
        prompt_tokens = typical_tokens(json.dumps(request.get("messages", [])))
        completion_tokens = typical_tokens((turn.content or "") + json.dumps(calls))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "scripted"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls" if calls else "stop",
                    "message": {
                        "role": "assistant",
                        "content": turn.content,
                        **({"tool_calls": calls} if calls else {}),
                    },
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                server.requests.append(request)
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                refused = response_format_problem(request.get("response_format"))
                if refused is not None:
                    self._send(
                        400, {"error": {"message": refused, "type": "invalid_request_error"}}
                    )
                    return
                if server.latency_s:
                    time.sleep(server.latency_s)
                fault = server.next_fault()
                if fault == Fault.rate_limit:
                    self._send(
                        429,
                        {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                        {"retry-after": f"{server.retry_after_s:g}"},
                    )
                    return
                if fault == Fault.server_error:
                    self._send(500, {"error": {"message": "injected 500", "type": "server_error"}})
                    return
                if fault is not None and fault in STATUS_FAULTS:
                    status, kind = STATUS_FAULTS[fault]
                    self._send(status, {"error": {"message": f"injected {status}", "type": kind}})
                    return
                if fault == Fault.slow:
                    time.sleep(server.slow_s)
                body = server.completion(request, fault)
                wait = server._limits.take(1, int(body["usage"]["total_tokens"]))
                if wait is not None:
                    server.limited += 1
                    self._send(
                        429,
                        {"error": {"message": "rate limit reached", "type": "rate_limit_error"}},
                        {"retry-after": f"{wait:.3f}"},
                    )
                    return
                server.served.append(time.time())
                if fault == Fault.truncated:
                    payload = json.dumps(body).encode()
                    self._send_raw(200, payload[: len(payload) // 2])
                    return
                self._send(200, body)

            def _send(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                self._send_raw(status, json.dumps(body).encode(), headers)

            def _send_raw(
                self, status: int, payload: bytes, headers: dict[str, str] | None = None
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): that is the fault working

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def start(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Buckets:
    """Token buckets for requests and tokens: full at first, refilled at limit/window."""

    def __init__(self, requests: int | None, tokens: int | None, window_s: float) -> None:
        self.limits = {"requests": requests, "tokens": tokens}
        self.window_s = window_s
        self.levels = {name: float(limit or 0) for name, limit in self.limits.items()}
        self.at = time.monotonic()
        self.lock = threading.Lock()

    def take(self, requests: int, tokens: int) -> float | None:
        """Take a call's units; None if taken, else the seconds until there would be enough."""
        wanted = {"requests": requests, "tokens": tokens}
        with self.lock:
            now = time.monotonic()
            elapsed, self.at = now - self.at, now
            wait = 0.0
            for name, limit in self.limits.items():
                if limit is None:
                    continue
                rate = limit / self.window_s
                self.levels[name] = min(float(limit), self.levels[name] + elapsed * rate)
                short = min(wanted[name], limit) - self.levels[name]
                wait = max(wait, short / rate)
            if wait > 0:
                return wait
            for name, limit in self.limits.items():
                if limit is not None:
                    self.levels[name] -= wanted[name]
            return None
