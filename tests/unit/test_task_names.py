"""The task names on the wire are a contract: upstream publishers, anyone's own consumer
of tether.escalations, and messages already queued or dead-lettered by an earlier release
name them. Moving the code that handles them must not rename them."""

from __future__ import annotations

import re
from pathlib import Path

from tether.transport import celery_app

#: As docs/concepts/architecture.md and docs/guides/escalations.md give them.
WIRE_NAMES = {
    "tether.plan.start",
    "tether.plan.step",
    "tether.plan.observe",
    "tether.plan.resume",
    "tether.tools.execute",
    "tether.escalations.open",
    "tether.escalations.decide",
}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _registered() -> set[str]:
    from tether.escalation.worker import app as escalation
    from tether.executor.worker import app as executor
    from tether.planner.worker import app as planner

    return {
        name
        for app in (planner, executor, escalation)
        for name in app.tasks
        if not name.startswith("celery.")
    }


def test_the_services_register_the_task_names_on_the_wire() -> None:
    assert _registered() >= WIRE_NAMES
    assert {
        celery_app.START,
        celery_app.STEP,
        celery_app.OBSERVE,
        celery_app.RESUME,
        celery_app.EXECUTE,
        celery_app.ESCALATE,
        celery_app.DECIDE,
    } == WIRE_NAMES


def test_every_task_name_the_docs_give_is_registered() -> None:
    named = set()
    for page in ("concepts/architecture.md", "guides/escalations.md"):
        named |= set(re.findall(r"`(tether\.[a-z]+\.[a-z]+)`", (DOCS / page).read_text()))
    tasks = {name for name in named if not name.endswith((".py", ".lua"))} - {
        celery_app.PLAN_QUEUE,
        celery_app.TOOLS_QUEUE,
        celery_app.ESCALATIONS_QUEUE,
    }
    assert tasks >= {"tether.tools.execute", "tether.escalations.decide"}
    assert tasks <= _registered()
