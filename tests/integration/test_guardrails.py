"""Guardrails (issue 25) through real planner, executor and escalation workers: each
outcome (pass, block, escalate, rewrite) at each place (input, tool arguments, tool
result, output), and a redacted card number nowhere: run state, event log, lifecycle
stream, stored results, traces or the answer.

The stack has a Redis of its own, so every key in it belongs to these tests' runs.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from tests.guardrail_agents import CARD, FLAG, PAGES, SECRET
from tests.integration.helpers import kinds, pending_escalation, wait_for, wait_status
from tests.redis_contents import everything_in_redis
from tests.stacks import started_stack
from tether import client
from tether.cli.stats import stats_table
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.insights import stats
from tether.observability.tracing import run_trace_id
from tether.runtime import Runtime
from tether.store.state import RunState
from tether.testing.otlp_receiver import OTLPReceiver
from tether.transport.wire import RunEvent, TaskEvent, ToolAction, Verdict

AGENTS = ["tests.guardrail_agents", "docs.examples.guarded_agent"]
CARD_FORMS = (CARD, CARD.replace(" ", ""))


@pytest.fixture(scope="module")
def receiver() -> OTLPReceiver:
    return OTLPReceiver().start()


@pytest.fixture(scope="module")
def stack(receiver: OTLPReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(
        agent_modules=AGENTS,
        log_dir=Path(tmp_path_factory.mktemp("guardrail-logs")),
        env={"TETHER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
        metrics_ports={"planner": free_port(), "executor": free_port()},
    )
    with started_stack(stack, then=[receiver.stop]) as running:
        yield running


@pytest.fixture(scope="module")
def rt(stack: DevStack) -> Runtime:
    return Runtime(Settings(redis_url=stack.redis_url, agent_modules=AGENTS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _guardrail_entries(rt: Runtime, run_id: str) -> list[RunEvent]:
    return [e for _, e in rt.store.log.read(run_id) if e.kind == "guardrail"]


def _outcomes(rt: Runtime, run_id: str) -> set[tuple[str, str, str]]:
    return {
        (e.data["place"], e.data["guardrail"], e.data["outcome"])
        for e in _guardrail_entries(rt, run_id)
    }


def _tool_calls(rt: Runtime, run_id: str) -> list[RunEvent]:
    return [e for _, e in rt.store.log.read(run_id) if e.kind == "tool_call"]


def _submit(rt: Runtime, goal: str, agent: str = "guarded") -> str:
    return client.submit(agent, goal, runtime=rt)


def _trace_text(receiver: OTLPReceiver, run_id: str, timeout_s: float = 15.0) -> str:
    """The run's spans, as text, once its root span (ended last) arrived."""
    deadline = time.monotonic() + timeout_s
    while True:
        spans = receiver.traces().get(f"{run_trace_id(run_id):032x}", [])
        if any(s.name.startswith("invoke_agent") for s in spans):
            return json.dumps([s.model_dump() for s in spans], default=str)
        if time.monotonic() > deadline:
            raise AssertionError(f"no complete trace of {run_id}: {[s.name for s in spans]}")
        time.sleep(0.1)


# pass ---------------------------------------------------------------------------------


def test_clean_run_passes_every_guardrail_at_every_place(rt: Runtime) -> None:
    run_id = _submit(rt, "echo:hello | fetch:clean | say:fine")
    state = wait_status(rt, run_id, "succeeded")
    assert state.result == "fine"
    assert state.goal == "echo:hello | fetch:clean | say:fine"
    found = _outcomes(rt, run_id)
    expected = (
        {("input", g, "pass") for g in ("secrets", "length", "pii")}
        | {("tool_arguments", g, "pass") for g in ("secrets", "keyword", "pii")}
        | {("tool_result", g, "pass") for g in ("secrets", "prompt_injection", "pii")}
        | {("output", g, "pass") for g in ("secrets", "keyword", "pii")}
    )
    assert found == expected
    # Each outcome once: passes of echo's result too (fetch's and echo's results: 2 x 3).
    assert len(_guardrail_entries(rt, run_id)) == 3 + 3 + 6 + 3
    assert [e.data["output"] for e in _tool_calls(rt, run_id)] == [
        "echo got: hello",
        PAGES["clean"],
    ]


# rewrite ------------------------------------------------------------------------------


def test_a_card_number_is_redacted_everywhere_at_every_place(
    rt: Runtime, receiver: OTLPReceiver
) -> None:
    goal = f"echo:pay with {{card}} | fetch:card | say:charged {{card}} | note {CARD}"
    run_id = _submit(rt, goal)
    state = wait_status(rt, run_id, "succeeded")

    assert state.result == "charged [REDACTED card]"
    assert state.goal == goal.replace(CARD, "[REDACTED card]")
    outputs = [e.data["output"] for e in _tool_calls(rt, run_id)]
    # The tool got the redacted arguments; fetch's result was redacted before it was stored.
    assert outputs == [
        "echo got: pay with [REDACTED card]",
        "customer card [REDACTED card] on file",
    ]
    rewrites = {(p, g) for p, g, o in _outcomes(rt, run_id) if o == "rewrite"}
    assert rewrites == {
        ("input", "pii"),
        ("tool_arguments", "pii"),
        ("tool_result", "pii"),
        ("output", "pii"),
    }
    assert all("4111" not in json.dumps(e.data) for e in _guardrail_entries(rt, run_id))
    everything = everything_in_redis(rt) + state.model_dump_json()
    assert run_id in everything and "[REDACTED card]" in everything
    for form in CARD_FORMS:
        assert form not in everything
        assert form not in _trace_text(receiver, run_id)
    assert CARD not in json.dumps(client.result(run_id, runtime=rt), default=str)


# block --------------------------------------------------------------------------------


def _rejected_by(
    rt: Runtime, run_id: str, guardrail: str, place: str, tool: str | None = None
) -> RunState:
    state = wait_status(rt, run_id, "rejected")
    assert state.error is not None and state.error.category == "guardrail_blocked"
    where = place + (f" of {tool!r}" if tool else "")
    assert f"guardrail {guardrail!r} blocked the {where}" in state.error.message
    assert (place, guardrail, "block") in _outcomes(rt, run_id)
    assert SECRET not in everything_in_redis(rt)
    return state


def test_a_secret_in_the_input_rejects_the_run_before_any_model_call(rt: Runtime) -> None:
    run_id = _submit(rt, f"say:hi | my key {SECRET}")
    state = _rejected_by(rt, run_id, "secrets", "input")
    assert state.goal.startswith("[withheld: guardrail 'secrets' blocked it")
    assert "model_call" not in kinds(rt, run_id)
    assert state.result is None


def test_a_secret_in_tool_arguments_rejects_the_run_and_the_tool_never_runs(
    rt: Runtime,
) -> None:
    run_id = _submit(rt, "echo:use {secret} | say:never")
    _rejected_by(rt, run_id, "secrets", "tool_arguments", "echo")
    assert not _tool_calls(rt, run_id)
    assert "tool_call" not in kinds(rt, run_id)


def test_a_secret_in_a_tool_result_rejects_the_run_before_the_model_reads_it(
    rt: Runtime,
) -> None:
    run_id = _submit(rt, "fetch:secret | say:model read {last}")
    state = _rejected_by(rt, run_id, "secrets", "tool_result", "fetch")
    # The model was asked once (for the call), never with the result.
    assert kinds(rt, run_id).count("model_call") == 1
    assert not any(m.role == "tool" for m in state.messages)
    (call,) = _tool_calls(rt, run_id)
    assert call.data["ok"] is False and call.data["output"] is None


def test_a_secret_in_the_answer_rejects_the_run_with_no_result(rt: Runtime) -> None:
    run_id = _submit(rt, "say:here it is {secret}")
    state = _rejected_by(rt, run_id, "secrets", "output")
    assert state.result is None


# escalate -----------------------------------------------------------------------------


def _guardrail_escalation(rt: Runtime, run_id: str) -> str:
    wait_status(rt, run_id, "waiting_human")
    record = pending_escalation(rt, run_id)
    assert record.escalation.kind == "guardrail"
    return record.escalation.escalation_id


def test_a_long_input_waits_for_a_person_who_lets_it_through(rt: Runtime) -> None:
    goal = "say:ok | " + "x" * 500
    run_id = _submit(rt, goal)
    escalation_id = _guardrail_escalation(rt, run_id)
    record = pending_escalation(rt, run_id)
    assert record.escalation.verdicts() == [Verdict.approve, Verdict.reject]
    assert record.escalation.context == goal
    assert "model_call" not in kinds(rt, run_id)
    client.decide(escalation_id, Verdict.approve, by="ops", runtime=rt)
    assert wait_status(rt, run_id, "succeeded").result == "ok"


def test_a_long_input_a_person_rejects_ends_the_run_rejected(rt: Runtime) -> None:
    run_id = _submit(rt, "say:ok | " + "y" * 500)
    client.decide(_guardrail_escalation(rt, run_id), Verdict.reject, by="ops", runtime=rt)
    state = wait_status(rt, run_id, "rejected")
    assert state.error is not None and state.error.category == "human_rejected"
    assert "model_call" not in kinds(rt, run_id)


def test_escalated_tool_arguments_run_only_once_a_person_approves(rt: Runtime) -> None:
    run_id = _submit(rt, "echo:about {flag} | say:ok")
    escalation_id = _guardrail_escalation(rt, run_id)
    assert ("tool_arguments", "keyword", "escalate") in _outcomes(rt, run_id)
    assert not _tool_calls(rt, run_id)
    client.decide(escalation_id, Verdict.approve, by="ops", runtime=rt)
    wait_status(rt, run_id, "succeeded")
    assert [e.data["output"] for e in _tool_calls(rt, run_id)] == [f"echo got: about {FLAG}"]


def test_escalated_tool_arguments_a_person_rejects_never_run(rt: Runtime) -> None:
    run_id = _submit(rt, "echo:about {flag} | say:ok")
    client.decide(_guardrail_escalation(rt, run_id), Verdict.reject, by="ops", runtime=rt)
    wait_status(rt, run_id, "rejected")
    assert not _tool_calls(rt, run_id)


def test_an_injection_in_a_tool_result_reaches_the_model_only_once_approved(
    rt: Runtime,
) -> None:
    run_id = _submit(rt, "fetch:inject | say:model read {last}")
    escalation_id = _guardrail_escalation(rt, run_id)
    record = pending_escalation(rt, run_id)
    assert record.escalation.verdicts() == [Verdict.approve, Verdict.reject]
    assert PAGES["inject"] in (record.escalation.context or "")
    held = rt.store.load(run_id)
    assert not any(m.role == "tool" for m in held.messages)
    assert kinds(rt, run_id).count("model_call") == 1

    client.decide(escalation_id, Verdict.approve, by="ops", runtime=rt)
    state = wait_status(rt, run_id, "succeeded")
    assert state.result == "model read " + json.dumps({"result": PAGES["inject"]})
    # The tool ran once: approving handed its stored result over, it did not run again.
    assert len(_tool_calls(rt, run_id)) == 1
    assert [o.tool for o in state.completed_actions] == ["fetch"]


def test_an_injection_in_a_tool_result_a_person_rejects_is_never_read(rt: Runtime) -> None:
    run_id = _submit(rt, "fetch:inject | say:model read {last}")
    client.decide(_guardrail_escalation(rt, run_id), Verdict.reject, by="ops", runtime=rt)
    state = wait_status(rt, run_id, "rejected")
    assert not any(m.role == "tool" for m in state.messages)
    assert kinds(rt, run_id).count("model_call") == 1


def test_an_escalated_answer_goes_out_once_a_person_approves_it(rt: Runtime) -> None:
    run_id = _submit(rt, "say:about {flag}")
    escalation_id = _guardrail_escalation(rt, run_id)
    assert pending_escalation(rt, run_id).escalation.draft == f"about {FLAG}"
    assert rt.store.load(run_id).result is None
    client.decide(escalation_id, Verdict.approve, by="ops", runtime=rt)
    assert wait_status(rt, run_id, "succeeded").result == f"about {FLAG}"


def test_an_escalated_answer_a_person_rejects_never_goes_out(rt: Runtime) -> None:
    run_id = _submit(rt, "say:about {flag}")
    client.decide(_guardrail_escalation(rt, run_id), Verdict.reject, by="ops", runtime=rt)
    assert wait_status(rt, run_id, "rejected").result is None


# a guardrail that calls a model -------------------------------------------------------


def test_a_model_guardrail_is_charged_to_the_runs_budget(rt: Runtime) -> None:
    run_id = _submit(rt, "hello there", agent="judged")
    wait_status(rt, run_id, "succeeded")
    planned = sum(
        e.data["input_tokens"] + e.data["output_tokens"]
        for _, e in rt.store.log.read(run_id)
        if e.kind == "model_call"
    )
    # The input's check (opened with the budget) and the answer's (reserved and settled).
    assert rt.store.budgets.usage(run_id).tokens > planned > 0


def test_a_model_guardrail_that_flags_blocks(rt: Runtime) -> None:
    run_id = _submit(rt, "you idiot", agent="judged")
    state = wait_status(rt, run_id, "rejected")
    assert state.error is not None and "it is rude" in state.error.message
    assert rt.store.budgets.usage(run_id).tokens > 0


# stats --------------------------------------------------------------------------------


def _guardrail_stats(rt: Runtime) -> Counter[str]:
    return Counter(stats.compute(rt.store, since=timedelta(hours=1), agent="guarded").guardrails)


def _guardrail_metrics(stack: DevStack) -> Counter[tuple[str, str, str]]:
    """tether_guardrail_outcomes_total of the planner and executor, by (place, outcome, guardrail)."""
    counted: Counter[tuple[str, str, str]] = Counter()
    for service in ("planner", "executor"):
        with urllib.request.urlopen(
            f"http://127.0.0.1:{stack.metrics_ports[service]}/metrics", timeout=5
        ) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "tether_guardrail_outcomes_total":
                    labels = sample.labels
                    key = (labels["place"], labels["outcome"], labels["guardrail"])
                    counted[key] += int(sample.value)
    return counted


def test_each_outcome_is_counted_once_in_metrics_and_stats(rt: Runtime, stack: DevStack) -> None:
    before, metrics_before = _guardrail_stats(rt), _guardrail_metrics(stack)
    run_id = _submit(rt, f"echo:{{card}} | fetch:secret | {CARD}")
    wait_status(rt, run_id, "rejected")
    # Every message of the run delivered again counts nothing again: the event, each
    # step, each action (its result is stored) and the blocked result's observation.
    rt.publish_event(TaskEvent(event_id=rt.store.load(run_id).event_id, agent="guarded", input="x"))
    for step in range(3):
        rt.send_step(run_id, step)
    for entry in _tool_calls(rt, run_id):
        action = ToolAction(
            action_id=entry.data["action_id"], run_id=run_id, agent="guarded", step=entry.step,
            tool=entry.data["tool"], tool_call_id=f"call_{entry.step}",
            arguments=entry.data["arguments"],
        )  # fmt: skip
        rt.send_action(action)
        observation = rt.store.results.get(action.action_id)
        assert observation is not None
        rt.send_observation(observation)
    wait_for(
        lambda: (
            kinds(rt, run_id).count("duplicate_step") >= 3
            and kinds(rt, run_id).count("duplicate_event") >= 1
        ),
        what="the redeliveries to be handled",
    )
    time.sleep(1.0)
    assert _guardrail_metrics(stack) - metrics_before == Counter(
        {
            ("input", "pass", "secrets"): 1,
            ("input", "pass", "length"): 1,
            ("input", "rewrite", "pii"): 1,
            ("tool_arguments", "pass", "secrets"): 1,
            ("tool_arguments", "pass", "keyword"): 1,
            ("tool_arguments", "rewrite", "pii"): 1,
            ("tool_result", "pass", "secrets"): 1,  # echo's result
            ("tool_result", "pass", "prompt_injection"): 1,
            ("tool_result", "pass", "pii"): 1,
            ("tool_result", "block", "secrets"): 1,  # fetch's
        }
    )
    added = _guardrail_stats(rt) - before
    # `tether stats` shows a row per outcome.
    shown = Console(record=True, width=200)
    shown.print(stats_table(stats.compute(rt.store, since=timedelta(hours=1), agent="guarded")))
    assert "guardrail tool_result:block" in shown.export_text()
    assert added == Counter(
        {
            "input:pass": 2,
            "input:rewrite": 1,
            "tool_arguments:pass": 2,
            "tool_arguments:rewrite": 1,
            "tool_result:pass": 3 + 0,  # echo's result: secrets, injection, pii
            "tool_result:block": 1,  # fetch's: secrets blocked it
        }
    )


# the guide's example --------------------------------------------------------------------


def test_the_guides_example_redacts_the_ticket_and_the_answer(rt: Runtime) -> None:
    run_id = _submit(rt, "Please settle my ticket 7.", agent="tickets")
    state = wait_status(rt, run_id, "succeeded")
    assert state.result is not None and "[REDACTED card]" in state.result
    assert CARD not in everything_in_redis(rt)
    found = _outcomes(rt, run_id)
    assert {
        ("tool_result", "pii", "rewrite"),
        ("tool_result", "prompt_injection", "pass"),
        ("tool_arguments", "refund_cap", "pass"),
        ("output", "politeness", "pass"),
        ("output", "pii", "rewrite"),
    } <= found
