"""A local stand-in for Sentry's ingest endpoint, for tests: it keeps every envelope.

Point a DSN at it (``server.dsn``, http://KEY@127.0.0.1:PORT/1) and sentry-sdk
posts its envelopes here, as it would to sentry.io; ``events()`` returns the
error events they carried.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """(item header, payload) for each item of a Sentry envelope."""
    _, _, rest = body.partition(b"\n")  # the envelope's own header
    items: list[tuple[dict[str, Any], bytes]] = []
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        length = header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length + 1 :]
        items.append((header, payload))
    return items


class SentryServer:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "deflate":
                    raw = zlib.decompress(raw)
                elif encoding == "br":
                    import brotli

                    raw = brotli.decompress(raw)
                with server._lock:
                    server.bodies.append(raw)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.port}/1"

    def events(self) -> list[dict[str, Any]]:
        """The error events received so far (transactions, sessions and the like left out)."""
        with self._lock:
            bodies = list(self.bodies)
        return [
            json.loads(payload)
            for body in bodies
            for header, payload in parse_envelope(body)
            if header.get("type") == "event"
        ]

    def wait_for_events(self, count: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.events()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            f"the Sentry stand-in got {len(self.events())} events, not {count}, "
            f"within {timeout_s:g}s"
        )

    def start(self) -> SentryServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> SentryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
