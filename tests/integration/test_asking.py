"""Escalate instead of guessing (issue 13), on real Redis and real worker processes:
ask_human, a low-confidence answer, budgets a human extends, webhook webhooks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import pending_escalation, wait_for, wait_status
from tether import client
from tether.config import Settings
from tether.dev.redis_server import RedisServer
from tether.dev.stack import DevStack
from tether.errors import DecisionRefusedError, EscalationClosedError
from tether.escalation import webhooks
from tether.runtime import Runtime
from tether.transport.wire import Verdict


def test_ask_human_answer_comes_back_as_the_tools_result(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("asker", "Refund Ann's last order", runtime=rt)
    wait_status(rt, run_id, "waiting_human")
    record = pending_escalation(rt, run_id)
    e = record.escalation
    assert e.kind == "model_uncertain"
    assert e.question == "Which account should I refund?" and e.context == "two accounts match"
    assert e.verdicts() == [Verdict.answer, Verdict.reject]
    with pytest.raises(DecisionRefusedError):
        client.decide(e.escalation_id, Verdict.approve, by="ops", runtime=rt)

    client.decide(e.escalation_id, Verdict.answer, by="ops", answer="ACC-7", runtime=rt)
    state = wait_status(rt, run_id, "succeeded")

    assert state.result == "Refunding account ACC-7"
    tool_messages = [json.loads(m.content or "") for m in state.messages if m.role == "tool"]
    assert tool_messages == [{"answer": "ACC-7", "answered_by": "ops"}]
    # The question never reached the executor.
    assert not [ev for _, ev in rt.store.log.read(run_id) if ev.kind == "tool_call"]


def test_ask_human_rejected_ends_the_run_rejected(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("asker", "Refund someone", runtime=rt)
    record = pending_escalation(rt, run_id)
    client.decide(
        record.escalation.escalation_id,
        Verdict.reject,
        by="ops",
        reason="no such customer",
        runtime=rt,
    )
    state = wait_status(rt, run_id, "rejected")
    assert state.error is not None and state.error.category == "human_rejected"
    assert "no such customer" in state.error.message
    assert state.partial_result


def test_low_confidence_answer_escalates_with_its_draft(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("confident", "What is six times seven?", runtime=rt)
    record = pending_escalation(rt, run_id)
    assert record.escalation.kind == "model_uncertain"
    assert record.escalation.draft == "maybe 41"
    assert "confidence 0.3" in record.escalation.reason

    client.decide(
        record.escalation.escalation_id, Verdict.answer, by="ops", answer="it is 42", runtime=rt
    )
    state = wait_status(rt, run_id, "succeeded")
    assert state.result == "42"


def _extend(rt: Runtime, escalation_id: str, by: float, who: str = "ops") -> None:
    client.decide(escalation_id, Verdict.extend, by=who, extend_by=by, runtime=rt)


def test_budget_extension_lets_the_run_finish(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("budgeted", "add 3 times", runtime=rt)
    record = pending_escalation(rt, run_id)
    e = record.escalation
    assert e.kind == "budget_exhausted" and e.budget is not None
    assert (e.budget.limit, e.budget.used, e.budget.max, e.budget.ceiling) == (
        "steps",
        2,
        2,
        5,
    )
    assert e.verdicts() == [Verdict.extend, Verdict.reject]

    _extend(rt, e.escalation_id, 2, who="carol")
    state = wait_status(rt, run_id, "succeeded")

    assert state.result == "added 3 times"
    assert state.limits.max_steps == 4
    assert rt.store.budgets.limit(run_id, "steps") == 4
    decided = [ev for _, ev in rt.store.log.read(run_id) if ev.kind == "escalation_decided"]
    assert decided[0].data["verdict"] == "extend" and decided[0].data["by"] == "carol"
    assert (decided[0].data["limit"], decided[0].data["extend_by"]) == ("steps", 2)


def test_second_extension_past_the_ceiling_is_refused(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("budgeted", "add 5 times", runtime=rt)
    first = pending_escalation(rt, run_id).escalation
    _extend(rt, first.escalation_id, 2)
    wait_for(
        lambda: any(
            r.escalation.escalation_id != first.escalation_id
            for r in [pending_escalation(rt, run_id)]
        ),
        what="a second budget escalation",
    )
    second = pending_escalation(rt, run_id).escalation
    assert second.budget is not None and second.budget.max == 4

    with pytest.raises(DecisionRefusedError, match="ceiling"):
        _extend(rt, second.escalation_id, 2)
    assert rt.store.budgets.limit(run_id, "steps") == 4
    assert rt.store.load(run_id).status == "waiting_human"

    client.decide(second.escalation_id, Verdict.reject, by="ops", reason="enough spent", runtime=rt)
    state = wait_status(rt, run_id, "budget_exhausted")
    assert state.error is not None and state.error.limit == "steps"
    assert "declined to extend" in state.error.message and state.partial_result


def test_two_operators_extending_at_once_spend_one_extension(stack_runtime: Runtime) -> None:
    rt = stack_runtime
    run_id = client.submit("budgeted", "add 3 times", runtime=rt)
    e = pending_escalation(rt, run_id).escalation
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def operator(name: str) -> None:
        barrier.wait()
        try:
            _extend(rt, e.escalation_id, 2, who=name)
            outcomes.append("ok")
        except (DecisionRefusedError, EscalationClosedError):
            # Refused by the budget script, or late enough to find the escalation decided.
            outcomes.append("refused")

    threads = [threading.Thread(target=operator, args=(f"op{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # Each client only checks that its extension could be spent; the escalation service
    # spends one, after checking who decided, and refuses the others.
    assert len(outcomes) == 6 and "ok" in outcomes
    state = wait_status(rt, run_id, "succeeded")
    assert rt.store.budgets.limit(run_id, "steps") == 4
    assert state.limits.max_steps == 4
    decided = [ev for _, ev in rt.store.log.read(run_id) if ev.kind == "escalation_decided"]
    assert len(decided) == 1
    # Once spent, the escalation takes no other extension: the budget script refuses
    # another extender, and the winner's own again is a duplicate that writes nothing.
    winner = decided[0].data["by"]
    for who, granted in ((winner, True), ("someone_else", False)):
        got, writes = rt.store.budgets.extension_writes(
            run_id, e.escalation_id, limit="steps", by=2, ceiling=10, extender=f"{who}|steps|2"
        )
        assert (got.granted, writes) == (granted, [])
    assert rt.store.budgets.limit(run_id, "steps") == 4


# Webhooks ------------------------------------------------------------------------------


class _Receiver:
    """A local webhook that fails its first ``fail_first`` requests with a 500."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                headers = dict(self.headers.items())
                receiver.requests.append((headers, data))
                if len(receiver.requests) <= receiver.fail_first:
                    self.send_response(500)
                else:
                    receiver.accepted.append((headers, data))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str]]:
        return [(json.loads(b)["escalation_id"], json.loads(b)["event"]) for _, b in self.accepted]


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver(fail_first=2)
    yield r
    r.server.shutdown()


SECRET = "s3cret"


def test_webhooks_delivered_once_each_signed_and_retried(
    redis_server: RedisServer, receiver: _Receiver, tmp_path: Path
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    env = {
        "TETHER_WEBHOOK_URLS": receiver.url,
        "TETHER_WEBHOOK_SECRET": SECRET,
        "TETHER_ESCALATION_WAITING_AFTER_S": "1",
        "TETHER_ESCALATION_WAITING_CHECK_S": "0.5",
    }
    rt = Runtime(Settings(redis_url=url, webhook_urls=receiver.url))
    rt.store.client.flushdb()
    with DevStack(
        redis_url=url, agent_modules=["tests.escalation_agents"], log_dir=tmp_path, env=env
    ):
        run_id = client.submit("asker", "Refund Bo", runtime=rt)
        e = pending_escalation(rt, run_id).escalation
        wait_for(
            lambda: (
                {(e.escalation_id, "escalation_opened"), (e.escalation_id, "escalation_waiting")}
                <= set(receiver.events())
            ),
            timeout_s=30,
            what="opened and waiting notifications",
        )
        client.decide(e.escalation_id, Verdict.answer, by="ops", answer="ACC-1", runtime=rt)
        wait_status(rt, run_id, "succeeded")
        wait_for(
            lambda: (e.escalation_id, "escalation_decided") in receiver.events(),
            timeout_s=30,
            what="the decided notification",
        )
        time.sleep(2)  # time for any duplicate to show up

    events = receiver.events()
    assert sorted(events) == sorted(
        [
            (e.escalation_id, "escalation_opened"),
            (e.escalation_id, "escalation_waiting"),
            (e.escalation_id, "escalation_decided"),
        ]
    )
    # The first two attempts failed and were retried.
    assert len(receiver.requests) == len(receiver.accepted) + 2
    for headers, data in receiver.accepted:
        assert webhooks.verify(SECRET, data, headers[webhooks.SIGNATURE_HEADER])
        assert (
            headers["X-Tether-Delivery"]
            == f"{json.loads(data)['escalation_id']}:" + json.loads(data)["event"]
        )
    opened = next(json.loads(d) for _, d in receiver.accepted if b"escalation_opened" in d)
    assert opened["kind"] == "model_uncertain" and opened["answers"] == ["answer", "reject"]
    decided = next(json.loads(d) for _, d in receiver.accepted if b"escalation_decided" in d)
    assert decided["decision"]["answer"] == "ACC-1"
