"""The HTTP API over real workers: events in, runs and their live events out, decisions.

The app runs under uvicorn on a loopback port; the planner, executor and escalation
services are real worker processes whose escalation service reads the operators file.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.integration.helpers import pending_escalation, wait_status
from tests.stacks import started_stack
from tether.api import create_app
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.escalation import operators, records
from tether.runtime import Runtime
from tether.store import indexes, keys
from tether.store.indexes import RunKind

AGENTS = ["tests.agents", "tests.escalation_agents"]


@dataclass
class Api:
    url: str
    rt: Runtime
    tokens: dict[str, str]

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.tokens[who]}"},
            timeout=30,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = Path(tmp_path_factory.mktemp("api"))
    tokens: dict[str, str] = {}
    entries = []
    for name, role in (("alice", "approver"), ("vic", "viewer")):
        tokens[name], key = operators.new_token()
        entries.append({"name": name, "key_sha256": key, "role": role})
    ops = root / "operators.json"
    ops.write_text(json.dumps({"operators": entries}))
    env = {"TETHER_OPERATORS_FILE": str(ops), "LEDGER_DIR": str(root)}
    with started_stack(DevStack(agent_modules=AGENTS, log_dir=root, env=env)) as stack:
        rt = Runtime(
            Settings(redis_url=stack.redis_url, agent_modules=AGENTS, operators_file=str(ops))
        )
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(rt, include_console=False),
                host="127.0.0.1",
                port=port,
                log_level="warning",
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = 200
            while not server.started and deadline:
                threading.Event().wait(0.05)
                deadline -= 1
            assert server.started, "uvicorn did not start"
            yield Api(f"http://127.0.0.1:{port}", rt, tokens)
        finally:
            server.should_exit = True
            thread.join(15)


def test_an_event_posted_twice_makes_one_run(api: Api) -> None:
    event = {"event_id": "api-twice", "agent": "calculator", "input": "add 2 and 3"}
    with api.client("alice") as http:
        first = http.post("/v1/events", json=event)
        second = http.post("/v1/events", json=event)
        assert first.status_code == 202, first.text
        assert second.status_code in (200, 202), second.text
        run_id = first.json()["run_id"]
        assert second.json()["run_id"] == run_id
        state = wait_status(api.rt, run_id, "succeeded")
        third = http.post("/v1/events", json=event)
        assert third.status_code == 200
        assert third.json()["published"] is False
        assert third.json()["status"] == "succeeded"
        # One run: one start in its log, one entry in the indexes.
        starts = [e for _, e in api.rt.store.log.read(run_id) if e.kind == "run_started"]
        assert len(starts) == 1
        index = indexes.by_agent(RunKind.production, "calculator")
        assert api.rt.store.client.zscore(index, run_id) is not None
        listed = http.get("/v1/runs", params={"agent": "calculator"}).json()["runs"]
        assert [r["run_id"] for r in listed].count(run_id) == 1
        assert state.result is not None


def _stream(http: httpx.Client, run_id: str) -> list[tuple[str, str, dict[str, object]]]:
    """(id, event name, data) of every server-sent event until the server ends the stream."""
    found: list[tuple[str, str, dict[str, object]]] = []
    fields: dict[str, str] = {}
    with http.stream("GET", f"/v1/runs/{run_id}/events") as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line == "":
                if "data" in fields:
                    found.append((fields["id"], fields["event"], json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return found


def test_the_event_stream_delivers_every_event_in_order_and_ends_at_the_terminal_one(
    api: Api,
) -> None:
    event = {"event_id": "api-sse", "agent": "payer", "input": "pay acme"}
    with api.client("alice") as http:
        run_id = http.post("/v1/events", json=event).json()["run_id"]
        streamed: list[tuple[str, str, dict[str, object]]] = []
        reader = threading.Thread(target=lambda: streamed.extend(_stream(http, run_id)))
        # The stream is open while the run waits for a human and after it goes on: live.
        reader.start()
        record = pending_escalation(api.rt, run_id)
        reply = http.post(
            f"/v1/escalations/{record.escalation.escalation_id}/decision",
            json={"verdict": "approve", "reason": "known customer"},
        )
        assert reply.status_code == 202, reply.text
        reader.join(60)
        assert not reader.is_alive(), "the stream did not end at the run's end"
    logged = api.rt.store.log.read(run_id)
    assert [entry_id for entry_id, *_ in streamed] == [entry_id for entry_id, _ in logged]
    assert [name for _, name, _ in streamed] == [str(e.kind) for _, e in logged]
    assert streamed[0][1] == "run_started"
    assert streamed[-1][1] == "run_finished"
    assert streamed[-1][2]["data"]["status"] == "succeeded"  # type: ignore[index]
    assert {"escalation_opened", "escalation_decided", "tool_call"} <= {n for _, n, _ in streamed}


def test_a_decision_through_the_api_is_the_operators_with_edited_arguments(
    api: Api,
) -> None:
    event = {"event_id": "api-decide", "agent": "payer", "input": "pay acme"}
    with api.client("alice") as alice, api.client("vic") as vic:
        run_id = alice.post("/v1/events", json=event).json()["run_id"]
        record = pending_escalation(api.rt, run_id)
        escalation_id = record.escalation.escalation_id
        inbox = vic.get("/v1/escalations").json()
        assert escalation_id in [e["escalation_id"] for e in inbox]
        shown = vic.get(f"/v1/escalations/{escalation_id}").json()
        assert shown["context"]["request"] == "pay acme"
        refused = vic.post(f"/v1/escalations/{escalation_id}/decision", json={"verdict": "approve"})
        assert refused.status_code == 403
        assert "approver" in refused.json()["detail"]
        assert records.load(api.rt, escalation_id)[0].status == "pending"
        unsigned = httpx.post(
            f"{api.url}/v1/escalations/{escalation_id}/decision", json={"verdict": "approve"}
        )
        assert unsigned.status_code == 401
        edited = {"account": "acme", "cents": 700}
        decided = alice.post(
            f"/v1/escalations/{escalation_id}/decision",
            json={"verdict": "approve", "arguments": edited},
        )
        assert decided.status_code == 202, decided.text
        wait_status(api.rt, run_id, "succeeded")
        stored = records.load(api.rt, escalation_id)[0]
        assert stored.decision is not None
        assert (stored.decision.by, stored.decision.operator) == ("alice", "alice")
        timeline = vic.get(f"/v1/runs/{run_id}/timeline").json()
        calls = [e for e in timeline["entries"] if e["kind"] == "tool_call"]
        # The call ran with the arguments the operator edited.
        assert calls and calls[-1]["data"]["arguments"] == edited
        assert any(e["kind"] == "model_call" and e["data"]["messages"] for e in timeline["entries"])
        assert len(timeline["trace_id"]) == 32
        assert api.rt.store.client.zscore(keys.RUN_INDEX, run_id) is not None
