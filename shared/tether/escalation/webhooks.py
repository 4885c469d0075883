"""Webhook notifications of escalations: opened, decided, expired, and reminders before expiry.

A notification is a stream entry (``tether:notifications``) written in the same
commit as the escalation change it reports (versioned.lua appends), so it is
never lost and never sent for a change that did not commit, and committing
never waits for a webhook. The escalation service's background thread
(``Notifier``) reads the stream as a consumer group and POSTs each entry to
every configured webhook: a JSON body in the Standard Webhooks form
(standardwebhooks.com): ``webhook-id`` (the notification's id, the same on every
attempt and from every worker: what a receiver deduplicates on),
``webhook-timestamp`` and, under ``TETHER_WEBHOOK_SECRET``, ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``); the older
``X-Tether-Signature: sha256=<hex of the body's HMAC>`` is still sent. Each POST is
retried with exponential backoff (tenacity).

Sending to a webhook takes a lease first, in the key that records the delivery
(one script: delivered already, someone else sending, or ours now), renewed for as
long as the send lasts; success replaces it with the delivered mark. So an entry
that another worker claims while a slow webhook holds this one up (its retries can
outlast the claim's idle time), or one delivered again after a crash, reaches no
webhook twice, unless a worker stalls past its lease mid-send: then the same
``webhook-id`` arrives twice. An entry whose webhooks still fail stays pending and
is retried later, by this worker or another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import redis
from standardwebhooks import Webhook
from tenacity import Retrying, stop_after_attempt, wait_exponential

from tether.config import Settings
from tether.errors import UnknownEscalationError
from tether.escalation.stored import load
from tether.observability.logs import log
from tether.runtime import Runtime
from tether.store import keys
from tether.store.scripts import Script
from tether.store.state import EscalationRecord
from tether.store.versioned import Append
from tether.transport.wire import Decision, Escalation, utcnow

GROUP = "webhooks"
SIGNATURE_HEADER = "X-Tether-Signature"
STREAM_MAXLEN = 100_000
# How long an entry a worker took may sit undelivered before another worker takes it
# (one still sending it holds a lease: the taker skips it).
CLAIM_IDLE_MS = 30_000
# A send's lease on one (notification, webhook); its sender renews it every third of it.
SEND_LEASE_MS = 15_000
# How long a delivery is remembered (and so deduplicated).
DELIVERED_TTL_S = 14 * 24 * 3600

OPENED, DECIDED, WAITING = "escalation_opened", "escalation_decided", "escalation_waiting"
# Reminders come before an escalation expires (TETHER_ESCALATION_WAITING_AT and
# TETHER_ESCALATION_EXPIRING_AT of its window), and EXPIRED with the expiry's commit.
EXPIRING, EXPIRED = "escalation_expiring", "escalation_expired"


REMINDERS = (WAITING, EXPIRING)


def reminder_marker(escalation_id: str, event: str) -> str:
    # The first reminder keeps the key it always had: one queued before an upgrade counts.
    if event == WAITING:
        return keys.notify_waiting(escalation_id)
    return keys.notify_reminder(escalation_id, event)


def reminders_due(settings: Settings, record: EscalationRecord, now: float) -> list[str]:
    """Which reminders of a pending escalation are due at ``now``, in order."""
    opened = record.escalation.created_at.timestamp()
    window = (
        record.expires_at.timestamp() - opened
        if record.expires_at is not None
        else settings.escalation_expiry_s
    )
    waiting_after = (
        settings.escalation_waiting_after_s
        if settings.escalation_waiting_after_s is not None
        else settings.escalation_waiting_at * window
    )
    due = [WAITING] if now >= opened + waiting_after else []
    if record.expires_at is not None and now >= opened + settings.escalation_expiring_at * window:
        due.append(EXPIRING)
    return due


def body(
    escalation: Escalation,
    event: str,
    decision: Decision | None = None,
    *,
    expires_at: datetime | None = None,
) -> str:
    return json.dumps(
        {
            "event": event,
            "escalation_id": escalation.escalation_id,
            "run_id": escalation.run_id,
            "agent": escalation.agent,
            "kind": escalation.kind,
            "reason": escalation.reason,
            "question": escalation.question,
            "draft": escalation.draft,
            "budget": escalation.budget.model_dump(mode="json") if escalation.budget else None,
            "answers": [str(v) for v in escalation.verdicts()],
            "decision": decision.model_dump(mode="json") if decision else None,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "at": utcnow().isoformat(),
        },
        sort_keys=True,
    )


def appends(
    settings: Settings, escalation: Escalation, event: str, decision: Decision | None = None
) -> list[Append]:
    """The notification to write with a commit; none when no webhook is configured."""
    if not settings.webhooks:
        return []
    return [
        Append(
            keys.NOTIFICATIONS,
            {
                "escalation_id": escalation.escalation_id,
                "event": event,
                "body": body(escalation, event, decision),
            },
            maxlen=STREAM_MAXLEN,
        )
    ]


def sign(secret: str, payload: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def verify(secret: str, payload: bytes, signature: str) -> bool:
    """What a receiver checks: the signature header matches the body under the secret."""
    return hmac.compare_digest(sign(secret, payload), signature)


def webhook(secret: str) -> Webhook:
    """The Standard Webhooks signer and verifier for ``secret``; a receiver calls
    ``webhook(secret).verify(body, headers)``. A ``whsec_<base64>`` secret is the key it
    encodes, as the standard has it; any other secret is its UTF-8 bytes."""
    return Webhook(secret if secret.startswith("whsec_") else secret.encode())


def notification_id(fields: dict[str, str]) -> str:
    """The notification's ``webhook-id``: one escalation's one event, however often sent."""
    return f"{fields['escalation_id']}:{fields['event']}"


def _target(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


# A "still waiting" notification, queued once per escalation and reminder.
WEBHOOK_WAITING = Script.load("tether.escalation", "webhook_waiting.lua")
# A send's lease, in the key that records the delivery: taken, renewed, given back.
SEND_LEASE_TAKE = Script.load("tether.escalation", "send_lease_take.lua")
SEND_LEASE_RENEW = Script.load("tether.escalation", "send_lease_renew.lua")
SEND_LEASE_RELEASE = Script.load("tether.escalation", "send_lease_release.lua")


class Notifier:
    """Delivers the notification stream to the webhooks; one per escalation worker."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_waiting_check = 0.0
        secret = settings.webhook_secret
        self._signer = webhook(secret) if secret else None

    # -- the background thread -----------------------------------------------------

    def start(self) -> Notifier:
        self._ensure_group()
        self._thread = threading.Thread(target=self._loop, name="tether-notifier", daemon=True)
        self._thread.start()
        log.info("notifier_started", webhooks=len(self.settings.webhooks))
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once(block_ms=1000)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.error("notifier_failed", error=repr(exc))
                self._ensure_group()  # the stream was deleted (a flushed Redis): start again
                self._stop.wait(0.2)
            except Exception as exc:  # the thread must outlive any one failure
                log.error("notifier_failed", error=repr(exc))
                self._stop.wait(1.0)

    def _ensure_group(self) -> None:
        try:
            self.client.xgroup_create(keys.NOTIFICATIONS, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- one pass ------------------------------------------------------------------

    def run_once(self, block_ms: int = 0) -> int:
        """Queue due "waiting" notifications, then deliver what is pending; how many delivered."""
        now = time.time()
        if now - self._last_waiting_check >= self.settings.escalation_waiting_check_s:
            self._last_waiting_check = now
            self.queue_waiting(now)
        entries = self._claim_stale()
        entries += self._read_new(block_ms)
        delivered = 0
        for entry_id, fields in entries:
            if self.deliver(fields):
                pipe = self.client.pipeline(transaction=True)
                pipe.xack(keys.NOTIFICATIONS, GROUP, entry_id)
                pipe.xdel(keys.NOTIFICATIONS, entry_id)
                pipe.execute()
                delivered += 1
        return delivered

    def _read_new(self, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        reply: Any = self.client.xreadgroup(
            GROUP, self.consumer, {keys.NOTIFICATIONS: ">"}, count=20, block=block_ms or None
        )
        return [entry for _, stream_entries in reply or [] for entry in stream_entries]

    def _claim_stale(self) -> list[tuple[str, dict[str, str]]]:
        # Entries a dead (or failing) consumer took and never acknowledged.
        reply: Any = self.client.xautoclaim(
            keys.NOTIFICATIONS, GROUP, self.consumer, min_idle_time=CLAIM_IDLE_MS, count=20
        )
        return [e for e in reply[1] if e and e[1]]

    def queue_waiting(self, now: float) -> int:
        """The reminders now due for each pending escalation, each once.

        "escalation_waiting" at TETHER_ESCALATION_WAITING_AFTER_S, if set, else at
        TETHER_ESCALATION_WAITING_AT of its expiry window; "escalation_expiring" at
        TETHER_ESCALATION_EXPIRING_AT of it, while a human can still decide in time.
        """
        # The oldest pending first: those are the ones whose reminders fall due.
        ids = cast(list[str], self.client.zrange(keys.PENDING_ESCALATIONS, 0, 999))
        queued = 0
        rt: Runtime | None = None
        for escalation_id in ids:
            markers = {event: reminder_marker(escalation_id, event) for event in REMINDERS}
            if all(self.client.exists(m) for m in markers.values()):
                continue
            rt = rt or Runtime(self.settings)
            try:
                record, _ = load(rt, escalation_id)
            except UnknownEscalationError:
                continue
            if record.status != "pending":
                continue
            for event in reminders_due(self.settings, record, now):
                queued += int(
                    WEBHOOK_WAITING.run(
                        self.client,
                        keys=[markers[event], keys.NOTIFICATIONS],
                        args=[
                            DELIVERED_TTL_S,
                            STREAM_MAXLEN,
                            escalation_id,
                            event,
                            body(record.escalation, event, expires_at=record.expires_at),
                        ],
                    )
                )
        return queued

    def deliver(self, fields: dict[str, str]) -> bool:
        """POST one notification to every webhook not yet reached; True once all have it.

        A webhook another worker is sending it to now counts as not yet reached: the
        entry stays pending, and that worker acknowledges it once every webhook has it.
        """
        payload = fields["body"].encode()
        delivery = notification_id(fields)
        ok = True
        for url in self.settings.webhooks:
            marker = keys.notified(fields["escalation_id"], fields["event"], _target(url))
            with self._sending(marker) as taken:
                if taken == "delivered":
                    continue  # reached before (a redelivered entry): never twice
                if taken == "busy":
                    ok = False
                    continue
                try:
                    self._post(url, payload, delivery, fields["event"])
                except Exception as exc:  # kept pending, retried later
                    ok = False
                    log.warning("webhook_failed", url=url, delivery=delivery, error=repr(exc))
                    continue
                self.client.set(marker, "1", ex=DELIVERED_TTL_S)
            log.info("webhook_delivered", url=url, delivery=delivery)
        return ok

    @contextmanager
    def _sending(self, marker: str) -> Iterator[str]:
        """Take the send's lease on ``marker`` and keep it for as long as the block runs:
        "go", else "delivered" or "busy" (another worker is sending) and no lease."""
        token = f"sending:{self.consumer}:{uuid.uuid4().hex}"
        taken = str(SEND_LEASE_TAKE.run(self.client, keys=[marker], args=[token, SEND_LEASE_MS]))
        if taken != "go":
            yield taken
            return
        done = threading.Event()

        def renew() -> None:
            while not done.wait(SEND_LEASE_MS / 3000):
                try:
                    if not SEND_LEASE_RENEW.run(
                        self.client, keys=[marker], args=[token, SEND_LEASE_MS]
                    ):
                        log.warning("webhook_lease_lost", marker=marker)
                        return
                except redis.RedisError as exc:  # Redis away: try again next time
                    log.warning("webhook_lease_renewal_failed", marker=marker, error=repr(exc))

        renewer = threading.Thread(target=renew, name="tether-webhook-lease", daemon=True)
        renewer.start()
        try:
            yield taken
        finally:
            done.set()
            renewer.join()
            # A delivered send left "1" in place of the lease: that stays.
            SEND_LEASE_RELEASE.run(self.client, keys=[marker], args=[token])

    def _post(self, url: str, payload: bytes, delivery: str, event: str) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "tether-notifier",
            "X-Tether-Event": event,
            "X-Tether-Delivery": delivery,
            "webhook-id": delivery,
        }
        if self.settings.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(self.settings.webhook_secret, payload)
        for attempt in Retrying(
            stop=stop_after_attempt(self.settings.webhook_max_attempts),
            wait=wait_exponential(multiplier=0.2, max=self.settings.webhook_retry_wait_max_s),
            reraise=True,
        ):
            with attempt:
                # Each attempt is stamped and signed when it goes: a receiver refuses
                # a timestamp more than five minutes off, and retries can take that long.
                now = datetime.now(UTC)
                headers["webhook-timestamp"] = str(int(now.timestamp()))
                if self._signer is not None:
                    headers["webhook-signature"] = self._signer.sign(delivery, now, payload)
                request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.settings.webhook_timeout_s) as r:
                    if r.status >= 300:
                        raise urllib.error.HTTPError(url, r.status, "not 2xx", r.headers, None)
