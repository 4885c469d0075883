"""The input guardrail's rewrite on a thread (issue 25): a run's event waits in its
thread's queue for as long as the run lives, and that copy holds the redacted input,
never the card number the event was published with.

Real planner, executor and escalation workers on a Redis of their own, so every key
in it belongs to these tests' runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guardrail_agents import CARD
from tests.integration.helpers import pending_escalation, wait_status
from tests.redis_contents import everything_in_redis
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.store import keys
from tether.transport.wire import TaskEvent, Verdict

AGENTS = ["tests.guardrail_agents"]


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    stack = DevStack(
        agent_modules=AGENTS,
        concurrency=1,
        log_dir=Path(tmp_path_factory.mktemp("guardrail-thread-logs")),
    )
    with started_stack(stack) as running:
        yield Runtime(Settings(redis_url=running.redis_url, agent_modules=AGENTS))


def test_a_threads_queued_copy_of_a_running_event_holds_the_redacted_input(rt: Runtime) -> None:
    # The echo call's flag holds the run for a person, so its event stays on the thread.
    goal = f"echo:{{flag}} | say:done | note {CARD}"
    run_id = client.submit("guarded", goal, thread_id="t-card", runtime=rt)
    wait_status(rt, run_id, "waiting_human")
    queued = rt.store.client.hgetall(keys.thread_events("t-card"))
    assert len(queued) == 1
    kept = TaskEvent.model_validate_json(next(iter(queued.values())))
    assert kept.input == goal.replace(CARD, "[REDACTED card]")
    assert kept.thread_seq is not None
    for form in (CARD, CARD.replace(" ", "")):
        assert form not in everything_in_redis(rt)

    # The thread still works: the run ends, its turn is kept, the next event starts.
    record = pending_escalation(rt, run_id)
    client.decide(record.escalation.escalation_id, Verdict.approve, by="ops", runtime=rt)
    assert wait_status(rt, run_id, "succeeded").result == "done"
    after = client.submit("guarded", "say:next", thread_id="t-card", runtime=rt)
    wait_status(rt, after, "succeeded")
    assert CARD not in everything_in_redis(rt)
