"""Publish a task by name from any Celery client, with no Tether code (docs: Publishing events)."""

import os

from celery import Celery

app = Celery(broker=os.environ.get("TETHER_REDIS_URL", "redis://redis:6379/0"))
app.send_task(
    "tether.plan.start",
    kwargs={
        "event": {
            "schema_version": 1,
            "event_id": "crm-124",
            "agent": "support_desk",
            "input": "Where is order 1001?",
            "budget": {"max_steps": 5},
            "metadata": {"ticket": "CRM-124"},
        }
    },
    queue="tether.plan",
)
