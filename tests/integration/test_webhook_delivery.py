"""Webhook notifications reach a slow receiver once each, with two escalation workers
claiming from the same stream (tether.escalation.webhooks), in the Standard Webhooks form."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from standardwebhooks import Webhook

from tether.config import Settings
from tether.escalation import webhooks
from tether.store import keys

# The standard's form of a secret: its key in base64 after "whsec_".
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
# Each POST takes this long, and each notification's first POST fails: one send lasts
# two of them and a backoff, past both the claim's idle time and the lease below.
DELAY_S = 0.8


class SlowReceiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(DELAY_S)
                with receiver.lock:
                    key = _notification(data)
                    first = all(_notification(d) != key for _, d, _ in receiver.requests)
                    code = 500 if first else 204
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.requests.append((headers, data, code))
                self.send_response(code)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, d) for h, d, code in self.requests if code == 204]


def _notification(data: bytes) -> tuple[str, str]:
    body = json.loads(data)
    return body["escalation_id"], body["event"]


def _counting(worker: webhooks.Notifier, claimed: Counter[str]) -> Any:
    """The worker's claim of idle entries, counting what it takes over."""
    claim = worker._claim_stale

    def counted() -> list[tuple[str, dict[str, str]]]:
        taken = claim()
        claimed[worker.consumer] += len(taken)
        return taken

    return counted


@pytest.fixture
def receiver() -> Iterator[SlowReceiver]:
    r = SlowReceiver()
    yield r
    r.server.shutdown()


def test_a_slow_webhook_gets_each_notification_once_from_two_claiming_workers(
    redis_url: str, receiver: SlowReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The windows scaled down with the receiver's delay: a worker's batch outlasts the
    # claim's idle time many times over, and one send outlasts its lease unrenewed.
    monkeypatch.setattr(webhooks, "CLAIM_IDLE_MS", 200)
    monkeypatch.setattr(webhooks, "SEND_LEASE_MS", 1200)
    settings = Settings(
        redis_url=redis_url,
        webhook_urls=receiver.url,
        webhook_secret=SECRET,
        webhook_timeout_s=5.0,
        webhook_max_attempts=3,
        webhook_retry_wait_max_s=0.2,
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    sent = [(f"esc_{i}", webhooks.OPENED) for i in range(4)]
    for escalation_id, event in sent:
        body = json.dumps({"escalation_id": escalation_id, "event": event, "n": escalation_id})
        client.xadd(
            keys.NOTIFICATIONS, {"escalation_id": escalation_id, "event": event, "body": body}
        )

    claimed: Counter[str] = Counter()
    stop = threading.Event()
    workers = [webhooks.Notifier(client, settings) for _ in range(2)]
    for name, worker in zip(("a", "b"), workers, strict=True):
        worker.consumer = name
        worker._ensure_group()
        monkeypatch.setattr(worker, "_claim_stale", _counting(worker, claimed))

    def serve(worker: webhooks.Notifier) -> None:
        while not stop.is_set():
            worker.run_once(block_ms=100)

    threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            len({_notification(d) for _, d in receiver.accepted()}) < len(sent)
            or client.xpending(keys.NOTIFICATIONS, webhooks.GROUP)["pending"]
        ):
            time.sleep(0.1)
        time.sleep(2 * DELAY_S)  # time for a duplicate to arrive
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    # Entries were taken over from the worker still sending them.
    assert sum(claimed.values()) > 0
    accepted = Counter(_notification(d) for _, d in receiver.accepted())
    assert accepted == Counter(sent)  # each once
    verifier = Webhook(SECRET)
    for notification in sent:
        attempts = [(h, d) for h, d, _ in receiver.requests if _notification(d) == notification]
        assert len(attempts) == 2  # the failed first, the retry
        ids = {h["webhook-id"] for h, _ in attempts}
        assert ids == {f"{notification[0]}:{notification[1]}"}  # the same on the retry
        for headers, data in attempts:
            assert verifier.verify(data, headers) == json.loads(data)
    assert client.xlen(keys.NOTIFICATIONS) == 0
