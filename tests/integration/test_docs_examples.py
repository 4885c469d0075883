"""Every Python example the docs include (docs/examples/*.py) runs here, on real workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import pending_escalation
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.guardrails import GuardContext, GuardrailOutcome, GuardrailPlace, PiiGuardrail
from tether.models.scripted import from_turns, text, tool_call
from tether.runtime import Runtime
from tether.store import keys
from tether.store.runs import run_id_for
from tether.store.state import RunStatus
from tether.testing.openai_server import ScriptedOpenAIServer
from tether.transport.wire import Verdict

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
AGENT_EXAMPLES = [
    "docs.examples.billing",
    "docs.examples.guarded_agent",
    "docs.examples.memory_agent",
    "docs.examples.rate_limited",
    "docs.examples.short_agent",
    "docs.examples.typed_refund",
]


@pytest.fixture(scope="module")
def courier_endpoint() -> Iterator[ScriptedOpenAIServer]:
    """The rate-limit guide's model endpoint: it looks the address up, then answers."""
    turns = [tool_call("geocode", {"address": "1 Main St"}), text("It goes to 52.37,4.89.")]
    with ScriptedOpenAIServer(from_turns(turns)) as server:
        yield server


@pytest.fixture(scope="module")
def dstack(
    tmp_path_factory: pytest.TempPathFactory, courier_endpoint: ScriptedOpenAIServer
) -> Iterator[DevStack]:
    """Its own Redis and workers, loading the docs' agent modules and the support desk."""
    logs = Path(tmp_path_factory.mktemp("docs-logs"))
    with started_stack(
        DevStack(
            agent_modules=[*AGENT_EXAMPLES, "examples.support_desk.agent"],
            log_dir=logs,
            env={
                "SUPPORT_DESK_DB": str(logs / "support.sqlite3"),
                "COURIER_MODEL_URL": courier_endpoint.base_url,
            },
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
        "analyzer_detector.py",
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


def test_the_rate_limited_agent_of_the_guide_answers_through_its_limits(drt: Runtime) -> None:
    run_id = client.submit("courier", "Where does the parcel for 1 Main St go?", runtime=drt)
    state = client.wait(run_id, timeout_s=60, runtime=drt)
    assert state.status == RunStatus.succeeded, state.error
    assert state.result == "It goes to 52.37,4.89."
    assert [o.output for o in state.completed_actions] == ["52.37,4.89"]


def test_the_analyzer_detector_redacts_what_its_analyzer_finds() -> None:
    from docs.examples.analyzer_detector import AnalyzerDetector

    class Finding:
        """One finding, shaped as Presidio's RecognizerResult."""

        def __init__(self, entity_type: str, start: int, end: int) -> None:
            self.entity_type, self.start, self.end = entity_type, start, end

    class MemberIds:
        """An analyzer that knows one kind of identifier: ACME-<digits>."""

        def analyze(self, text: str, language: str) -> list[Finding]:
            assert language == "en"
            return [
                Finding("MEMBER_ID", m.start(), m.end()) for m in re.finditer(r"ACME-\d+", text)
            ]

    pii = PiiGuardrail(AnalyzerDetector(MemberIds()))
    context = GuardContext(run_id="r", agent="a", place=GuardrailPlace.input, step=0)
    verdict = pii.check("Member ACME-4411 asks about ACME-12.", context)
    assert verdict.outcome == GuardrailOutcome.rewrite
    assert verdict.rewritten == "Member [REDACTED member_id] asks about [REDACTED member_id]."
    assert pii.check("No member here.", context).outcome == GuardrailOutcome.passed


def test_the_short_agent_of_the_readme_answers(drt: Runtime) -> None:
    state = client.wait(client.submit("orders", "Where is order 1001?", runtime=drt), runtime=drt)
    assert state.status == RunStatus.succeeded, state.error
    assert state.result == "Order 1001 has shipped."


def test_the_guarded_agent_redacts_the_card_from_the_ticket_and_the_answer(
    drt: Runtime,
) -> None:
    state = client.wait(client.submit("tickets", "Settle ticket 7.", runtime=drt), runtime=drt)
    assert state.status == RunStatus.succeeded, state.error
    assert state.result is not None and "[REDACTED card]" in state.result
    assert "4111" not in state.model_dump_json()


def test_the_typed_agent_answers_with_a_validated_refund(dstack: DevStack) -> None:
    ran = _run_example("typed_refund.py", dstack)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "refund 25.00 EUR on order 1001"


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
