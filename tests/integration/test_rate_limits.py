"""Shared rate limits through real worker processes: a provider's requests per second kept
by two planner processes together, and a tool's calls per second by the executors.

The provider is tether.testing.openai_server with its limit on, reached through the
openai client; its window is a second, so 200 runs take about 25 s, not minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.ratelimit import measure, wait_ended
from tests.ratelimit_agents import TOOL_PER_S
from tests.stacks import started_stack
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime

LIMIT_PER_S = 8


@pytest.mark.timeout(400)
def test_two_planners_keep_the_providers_limit_with_no_429_and_near_its_rate(
    tmp_path: Path,
) -> None:
    limited = measure(200, LIMIT_PER_S, limited=True, log_dir=tmp_path / "limited")
    assert limited.succeeded == 200
    assert limited.status_429 == 0
    assert limited.share_of_limit == pytest.approx(1.0, abs=0.10)
    # The runs' timelines show the waits (most runs waited: 200 runs, 8 a second).
    assert limited.rate_limited_entries > 150


@pytest.mark.timeout(400)
def test_without_the_limit_the_provider_answers_429_and_the_pause_still_ends_every_run(
    tmp_path: Path,
) -> None:
    unlimited = measure(60, LIMIT_PER_S, limited=False, log_dir=tmp_path / "unlimited")
    assert unlimited.status_429 > 0
    # Each 429's Retry-After paused the endpoint for both planners, and every run went on.
    assert unlimited.succeeded == 60
    assert unlimited.rate_limited_entries >= unlimited.status_429


@pytest.fixture(scope="module")
def tool_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevStack, Path]]:
    logs = tmp_path_factory.mktemp("rate-tool")
    calls = logs / "calls.txt"
    stack = DevStack(
        agent_modules=["tests.ratelimit_agents"],
        env={"RATE_TOOL_LOG": str(calls)},
        log_dir=logs,
        concurrency=4,
    )
    with started_stack(stack) as running:
        yield running, calls


@pytest.mark.timeout(200)
def test_a_tools_calls_per_second_hold_across_executors_without_holding_a_worker(
    tool_stack: tuple[DevStack, Path],
) -> None:
    stack, calls = tool_stack
    rt = Runtime(Settings(redis_url=stack.redis_url))
    ids = [client.submit("tool_limited", f"key {i}", runtime=rt) for i in range(16)]
    assert set(wait_ended(rt, ids, 120)) == {"succeeded"}
    times = sorted(float(line) for line in calls.read_text().split())
    assert len(times) == 16  # each call ran once
    # A bucket of a second's allowance refilled at the rate: between any two calls, no more
    # than the burst plus what the time between them refilled (50 ms for clocks and writes).
    over = [
        (i, j)
        for i in range(len(times))
        for j in range(i + 1, len(times))
        if j - i + 1 > TOOL_PER_S + TOOL_PER_S * (times[j] - times[i] + 0.05)
    ]
    assert not over, [round(t - times[0], 3) for t in times]
    waited = [
        e.data for run_id in ids for _, e in rt.store.log.read(run_id) if e.kind == "rate_limited"
    ]
    assert waited and {w["limit"] for w in waited} == {"tool:lookup"}
    # 16 calls at 4 a second after a burst of 4 take about 3 s, not 16 worker-seconds of sleep.
    assert times[-1] - times[0] < 4.5
