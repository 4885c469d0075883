"""Every Python example the docs include (docs/examples/*.py) runs here, on real workers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import pending_escalation
from tests.stacks import started_stack
from tether import client, keys
from tether.config import Settings
from tether.devstack import DevStack
from tether.messages import Verdict
from tether.runtime import Runtime
from tether.state import RunStatus
from tether.store import run_id_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
AGENT_EXAMPLES = ["docs.examples.billing", "docs.examples.memory_agent", "docs.examples.short_agent"]


@pytest.fixture(scope="module")
def dstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """Its own Redis and workers, loading the docs' agent modules and the support desk."""
    logs = Path(tmp_path_factory.mktemp("docs-logs"))
    with started_stack(
        DevStack(
            agent_modules=[*AGENT_EXAMPLES, "examples.support_desk.agent"],
            log_dir=logs,
            env={"SUPPORT_DESK_DB": str(logs / "support.sqlite3")},
        )
    ) as running:
        yield running


@pytest.fixture(scope="module")
def drt(dstack: DevStack) -> Runtime:
    return Runtime(Settings(redis_url=dstack.redis_url))


def _run_example(name: str, stack: DevStack) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TETHER_REDIS_URL": stack.redis_url,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    env.pop("TETHER_MODEL_BASE_URL", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_every_example_is_run_by_this_module() -> None:
    covered = {m.rsplit(".", 1)[1] + ".py" for m in AGENT_EXAMPLES} | {
        "publish.py",
        "publish_celery.py",
    }
    assert {p.name for p in EXAMPLES.glob("*.py")} - {"__init__.py"} == covered


def test_the_billing_agent_voids_an_invoice_once_a_human_approves(drt: Runtime) -> None:
    run_id = client.submit("billing", "Please void invoice 7: it was charged twice.", runtime=drt)
    record = pending_escalation(drt, run_id)
    assert record.escalation.action is not None
    assert record.escalation.action.tool == "void_invoice"
    client.decide(record.escalation.escalation_id, Verdict.approve, by="alice", runtime=drt)
    state = client.wait(run_id, timeout_s=60, runtime=drt)
    assert state.status == RunStatus.succeeded, state.error
    assert state.result == "Invoice 7 is void."
    assert [o.tool for o in state.completed_actions] == ["get_invoice", "void_invoice"]


def test_the_short_agent_of_the_readme_answers(drt: Runtime) -> None:
    state = client.wait(client.submit("orders", "Where is order 1001?", runtime=drt), runtime=drt)
    assert state.status == RunStatus.succeeded, state.error
    assert state.result == "Order 1001 has shipped."


def test_the_memory_agent_remembers_per_customer(drt: Runtime) -> None:
    run_id = client.submit(
        "concierge", "I wear M.", metadata={"customer_id": "cust-ana"}, runtime=drt
    )
    state = client.wait(run_id, timeout_s=60, runtime=drt)
    assert state.status == RunStatus.succeeded, state.error
    stored = drt.store.client.hgetall(keys.memory("concierge", "cust-ana"))
    assert b"shirt_size" in stored or "shirt_size" in stored


def test_the_python_publishing_example_runs_the_support_desk(dstack: DevStack) -> None:
    done = _run_example("publish.py", dstack)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("succeeded"), done.stdout


def test_the_celery_publishing_example_starts_a_run(dstack: DevStack, drt: Runtime) -> None:
    done = _run_example("publish_celery.py", dstack)
    assert done.returncode == 0, done.stderr
    state = client.wait(run_id_for("crm-124"), timeout_s=60, runtime=drt)
    assert state.status == RunStatus.succeeded, state.error
    assert state.metadata == {"ticket": "CRM-124"}
