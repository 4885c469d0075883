"""The 1 s model for the runs-in-flight benchmark, in its own process.

tether.testing.openai_server.ScriptedOpenAIServer (a ThreadingHTTPServer that
sleeps ``latency_s`` per request) serving bench.agents.stepper_script. Run on
its own so its threads and GIL do not share a process with the driver; the
listen backlog is raised from socketserver's 5 (a burst of thousands of
connections would otherwise wait for SYN retransmits) and connections are
kept alive (HTTP/1.1, with TCP_NODELAY), as a real endpoint's are.

    python -m bench.model_server --latency 1.0 --url-file /tmp/url
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from bench.agents import stepper_script
from tether.testing.openai_server import ScriptedOpenAIServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--url-file", type=Path, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer.request_queue_size = 8192
    BaseHTTPRequestHandler.protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY the second waits
    # for the client's delayed ACK (40 ms) on every kept-alive request.
    BaseHTTPRequestHandler.disable_nagle_algorithm = True
    threading.stack_size(512 * 1024)
    server = ScriptedOpenAIServer(stepper_script, latency_s=args.latency)
    server.requests = _Discard()  # keep no copy of every request
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with server:
        args.url_file.write_text(server.base_url)
        while not stop.is_set():
            time.sleep(0.2)


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        return


if __name__ == "__main__":
    main()
