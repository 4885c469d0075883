"""A local OpenAI-compatible chat completions server that answers from a script.

Tests point the real openai client (and so OpenAIModel) at it, so the whole
HTTP path is exercised without a network. The script is the same kind the
scripted model takes: the conversation in, the next turn out.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tether.models.prices import estimate_tokens
from tether.models.scripted import Script
from tether.state import ChatMessage, ToolCall


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


class ScriptedOpenAIServer:
    def __init__(self, script: Script, *, latency_s: float = 0.0) -> None:
        self.script = script
        self.latency_s = latency_s
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def completion(self, request: dict[str, Any]) -> dict[str, Any]:
        messages = _parse_messages(request.get("messages", []))
        turn = self.script(messages)
        calls = [
            {
                "id": call.id
                if call.id != f"call_{call.name}"
                else f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in turn.tool_calls
        ]
        prompt_tokens = estimate_tokens(json.dumps(request.get("messages", [])))
        completion_tokens = estimate_tokens((turn.content or "") + json.dumps(calls))
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
                if server.latency_s:
                    time.sleep(server.latency_s)
                self._send(200, server.completion(request))

            def _send(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def start(self) -> ScriptedOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
