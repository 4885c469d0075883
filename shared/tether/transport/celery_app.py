"""The Celery app every service shares: queues, task names, delivery guarantees."""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from tether.config import Settings
from tether.redis_tls import tls_url

PLAN_QUEUE = "tether.plan"
TOOLS_QUEUE = "tether.tools"
ESCALATIONS_QUEUE = "tether.escalations"

# Task names are the public contract: upstream systems publish by name.
START = "tether.plan.start"
STEP = "tether.plan.step"
OBSERVE = "tether.plan.observe"
RESUME = "tether.plan.resume"
EXECUTE = "tether.tools.execute"
ESCALATE = "tether.escalations.open"
DECIDE = "tether.escalations.decide"

QUEUE_OF = {
    START: PLAN_QUEUE,
    STEP: PLAN_QUEUE,
    OBSERVE: PLAN_QUEUE,
    RESUME: PLAN_QUEUE,
    EXECUTE: TOOLS_QUEUE,
    ESCALATE: ESCALATIONS_QUEUE,
    DECIDE: ESCALATIONS_QUEUE,
}


def direct_route(queue: str) -> dict[str, str]:
    """Publish straight onto the queue's list through the anonymous exchange.

    kombu's Redis transport routes a named exchange through binding keys kept in
    Redis; if those are lost (a Redis restarted without its data) while a
    process keeps its declared-queue cache, publishes are silently dropped.
    The anonymous exchange needs no binding, and saves a lookup per message.
    """
    return {"queue": queue, "exchange": "", "routing_key": queue}


def broker_ssl(url: str) -> dict[str, Any]:
    """kombu's TLS options for a rediss:// broker URL: the server's certificate verified.

    Given a rediss:// URL and no options, kombu connects without checking the
    certificate; the URL's own ssl_* query (as Settings leaves it, with the
    TETHER_REDIS_TLS_* files in it) is what it gets instead.
    """
    _, found = tls_url(url, {})
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if found.get(name):
            options[name] = found[name]
    return options


def create_app(settings: Settings, name: str = "tether") -> Celery:
    broker = settings.broker_url or settings.redis_url
    app = Celery(name, broker=broker)
    if broker.split("://", 1)[0] in ("redis", "rediss"):
        app.conf.broker_transport = "tether.transport.reliable:RedisTransport"
    if broker.startswith("rediss://"):
        app.conf.broker_use_ssl = broker_ssl(broker)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_queues=[
            Queue(name, Exchange(name, type="direct"), routing_key=name)
            for name in (PLAN_QUEUE, TOOLS_QUEUE, ESCALATIONS_QUEUE)
        ],
        task_default_queue=PLAN_QUEUE,
        task_routes={name: direct_route(queue) for name, queue in QUEUE_OF.items()},
        # A message is acknowledged only after its handler returns, and handed to
        # another worker if its worker dies: every handler is safe to run twice.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task killed by its hard time limit goes back to the queue rather than
        # being acknowledged: the limit can fire while Redis is briefly away, after
        # a commit and before what follows it was published. Other failures are
        # dead letters (TetherTask.on_failure), written before the message is dropped.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            # One list per queue: a consumer moves from it atomically (tether.transport.reliable).
            "priority_steps": [0],
        },
        broker_connection_retry_on_startup=True,
        # Ride out a Redis restart when publishing, as the run store's client does.
        task_publish_retry_policy={
            "max_retries": 30,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        # Flower and `celery events` see tasks through these; they cost a Redis
        # PUBLISH per task state, a good part of Celery's work per message.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_hijack_root_logger=False,
        worker_concurrency=settings.worker_concurrency,
    )
    return app
