"""Escalation decisions carry an operator's identity when operators are configured.

Real workers whose escalation service reads TETHER_OPERATORS_FILE: a decision
with no credential, or signed with the wrong token, is refused and recorded as
refused; one signed by a configured operator (through the CLI and a token file)
is recorded under that operator's name, with when and from where.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import pending_escalation, wait_for
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.escalation import operators
from tether.runtime import Runtime
from tether.transport.wire import Verdict


@pytest.fixture(scope="module")
def operator_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevStack, str]]:
    root = Path(tmp_path_factory.mktemp("operators"))
    token, key = operators.new_token()
    (root / "operators.json").write_text(
        json.dumps({"operators": [{"name": "alice", "key_sha256": key}]})
    )
    env = {"TETHER_OPERATORS_FILE": str(root / "operators.json"), "LEDGER_DIR": str(root)}
    modules = ["tests.agents", "tests.escalation_agents"]
    with started_stack(DevStack(agent_modules=modules, log_dir=root, env=env)) as stack:
        yield stack, token


def _events(rt: Runtime, run_id: str, kind: str) -> list[dict[str, object]]:
    return [e.data for _, e in rt.store.log.read(run_id) if e.kind == kind]


def test_decisions_need_an_operator_credential(
    operator_stack: tuple[DevStack, str], tmp_path: Path
) -> None:
    stack, token = operator_stack
    rt = Runtime(Settings(redis_url=stack.redis_url))
    run_id = client.submit("payer", "pay acme", runtime=rt)
    record = pending_escalation(rt, run_id)
    escalation_id = record.escalation.escalation_id

    # Anyone who can publish a decision, with --by free text and no credential.
    client.decide(escalation_id, Verdict.approve, by="alice", runtime=rt)
    wait_for(lambda: len(_events(rt, run_id, "decision_refused")) == 1, 20, "a refusal")
    # A signature under a token that is not alice's.
    wrong, _ = operators.new_token()
    client.decide(escalation_id, Verdict.approve, by="alice", token=wrong, runtime=rt)
    wait_for(lambda: len(_events(rt, run_id, "decision_refused")) == 2, 20, "a second refusal")
    first, second = _events(rt, run_id, "decision_refused")
    assert "no operator credential" in str(first["reason"])
    assert "signature does not match" in str(second["reason"])
    assert rt.store.load(run_id).status == "waiting_human"
    assert _events(rt, run_id, "escalation_decided") == []

    # alice, through the CLI, with her token in a file.
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, TETHER_REDIS_URL=stack.redis_url)
    env.pop("TETHER_OPERATOR_TOKEN", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.cli.main",
            "escalations",
            "approve",
            escalation_id,
            "--by",
            "alice",
            "--token-file",
            str(token_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    state = client.wait(run_id, timeout_s=30, runtime=rt)
    assert state.status == "succeeded", state.error
    (decided,) = _events(rt, run_id, "escalation_decided")
    assert decided["operator"] == "alice" and decided["by"] == "alice"
    assert decided["client_host"] == socket.gethostname()
    assert isinstance(decided["client_pid"], int) and decided["client_pid"] != os.getpid()
    assert decided["at"] and decided["recorded_at"]
    assert token not in json.dumps(decided)


def test_an_unsigned_extension_spends_nothing(operator_stack: tuple[DevStack, str]) -> None:
    stack, token = operator_stack
    rt = Runtime(Settings(redis_url=stack.redis_url))
    run_id = client.submit("budgeted", "add 3 times", runtime=rt)
    escalation_id = pending_escalation(rt, run_id).escalation.escalation_id
    assert rt.store.budgets.limit(run_id, "steps") == 2
    # Its client checks the extension could be spent, and sends it unsigned.
    client.decide(escalation_id, Verdict.extend, by="mallory", extend_by=2, runtime=rt)
    wait_for(lambda: len(_events(rt, run_id, "decision_refused")) == 1, 20, "a refusal")
    # Refused before anything was spent: the escalation's one extension is still there.
    assert rt.store.budgets.limit(run_id, "steps") == 2
    client.decide(escalation_id, Verdict.extend, by="alice", extend_by=2, token=token, runtime=rt)
    state = client.wait(run_id, timeout_s=30, runtime=rt)
    assert state.status == "succeeded", state.error
    assert rt.store.budgets.limit(run_id, "steps") == 4
    (decided,) = _events(rt, run_id, "escalation_decided")
    assert decided["operator"] == "alice" and decided["extend_by"] == 2
