"""Flower, as `tether dev --flower-port` starts it: its HTTP API sees Tether's workers and tasks."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import wait_for, wait_status
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.redis_server import free_port
from tether.dev.stack import SERVICES, DevStack
from tether.runtime import Runtime
from tether.transport import celery_app


@pytest.fixture(scope="module")
def flower_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """The dev stack with Flower, on a Redis of its own (no other stack's workers)."""
    with started_stack(
        DevStack(
            agent_modules=["tests.agents"],
            log_dir=Path(tmp_path_factory.mktemp("flower-logs")),
            flower_port=free_port(),
        )
    ) as running:
        yield running


def _api(stack: DevStack, path: str) -> Any:
    url = f"http://127.0.0.1:{stack.flower_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _workers(stack: DevStack) -> dict[str, Any]:
    try:
        workers: dict[str, Any] = _api(stack, "/api/workers?refresh=1")
    except (urllib.error.URLError, ConnectionError):
        return {}  # Flower still starting
    return workers


def test_flower_api_lists_the_three_workers_and_tethers_tasks(flower_stack: DevStack) -> None:
    found: dict[str, Any] = {}

    def all_workers_seen() -> bool:
        found.update(_workers(flower_stack))
        return {name.split("-")[0] for name in found} >= set(SERVICES)

    wait_for(all_workers_seen, 30, "Flower to list the planner, executor and escalation workers")
    by_service = {name.split("-")[0]: info for name, info in found.items()}
    assert set(by_service) == set(SERVICES)
    # Each worker registered its service's tasks under their public names.
    assert {celery_app.START, celery_app.STEP, celery_app.OBSERVE, celery_app.RESUME} <= set(
        by_service["planner"]["registered"]
    )
    assert celery_app.EXECUTE in by_service["executor"]["registered"]
    assert {celery_app.ESCALATE, celery_app.DECIDE} <= set(by_service["escalation"]["registered"])

    rt = Runtime(Settings(redis_url=flower_stack.redis_url))
    run_id = client.submit("calculator", "What is 2 + 3?", runtime=rt)
    wait_status(rt, run_id, "succeeded")

    # Flower learns of tasks from the workers' task events (TETHER_TASK_EVENTS).
    wanted = {
        celery_app.START: ("planner", "agent=calculator"),
        celery_app.EXECUTE: ("executor", f"action_id={run_id}:0:0 tool=add"),
        celery_app.OBSERVE: ("planner", f"action_id={run_id}:0:0 tool=add ok=True"),
    }
    tasks: dict[str, dict[str, Any]] = {}

    def tasks_seen() -> bool:
        tasks.update(_api(flower_stack, "/api/tasks"))
        done = {t["name"] for t in tasks.values() if t["state"] == "SUCCESS"}
        return set(wanted) <= done

    wait_for(tasks_seen, 20, "Flower to show the run's tasks as succeeded")
    for task in tasks.values():
        worker, shown = wanted[task["name"]]
        assert task["worker"].split("-")[0] == worker
        # Task events carry the short form from `kwargsrepr`, not the payload.
        assert shown in task["kwargs"]
    started = _api(flower_stack, f"/api/tasks?taskname={celery_app.START}")
    assert [t["name"] for t in started.values()] == [celery_app.START]
