"""Shared rate limits against a provider's: runs through two planner processes against a
local OpenAI-compatible server that answers 429 + Retry-After over its requests per
window, once with the same limit configured in Tether and once without.

With the limit, Tether's planners share one GCRA in Redis and defer each step to its
slot, so the server should answer no 429 and serve close to its limit; without, the
planners call at will, learn the limit from 429s and pause the endpoint together.
``python -m bench.ratelimit`` prints the line; ``make bench`` runs it as a section.
The server's window is one second, so a test needs seconds, not minutes.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celery import Celery

from tether import client
from tether.agent.definition import Agent
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.models.openai import OpenAIModel
from tether.models.scripted import from_turns, text
from tether.runtime import Runtime
from tether.testing.openai_server import ScriptedOpenAIServer

MODEL = "gpt-4o-mini"
AGENT = "rate_limited_answer"
# One model call per run: a run is a request, so runs per second read against the limit.
rate_limited_answer = Agent(
    name=AGENT,
    instructions="Answer in one word.",
    model=OpenAIModel(
        MODEL,
        base_url=os.environ.get("RATE_OPENAI_URL", "http://127.0.0.1:9/v1"),
        timeout_s=10,
        max_attempts=3,
    ),
)


@dataclass
class RateLimitRun:
    runs: int
    succeeded: int
    status_429: int  # 429s the server answered
    # Requests served a second, from the moment every run had started to the last: before
    # that, intake (one queue with the steps) and not the limit bounds how fast they call.
    throughput_per_s: float
    limit_per_s: float
    elapsed_s: float
    rate_limited_entries: int  # rate_limited entries in the runs' event logs

    @property
    def share_of_limit(self) -> float:
        return self.throughput_per_s / self.limit_per_s


def measure(
    runs: int,
    limit_per_s: int,
    *,
    limited: bool,
    burst: float = 0.5,
    log_dir: Path | None = None,
    timeout_s: float = 180.0,
) -> RateLimitRun:
    """``runs`` runs through two planner processes (concurrency 2 each) against a server
    allowing ``limit_per_s`` requests a second; ``limited``: Tether is told the same limit
    (``burst`` of it at once, headroom for the jitter between the two clocks)."""
    with ScriptedOpenAIServer(
        from_turns([text("done")]), requests_per_window=limit_per_s, window_s=1.0
    ) as server:
        env = {"RATE_OPENAI_URL": server.base_url}
        if limited:
            limit = {"requests": limit_per_s, "window_s": 1.0, "burst": burst}
            env["TETHER_MODEL_RATE_LIMITS"] = json.dumps({f"{server.base_url}|{MODEL}": limit})
        with DevStack(agent_modules=["bench.ratelimit"], env=env, log_dir=log_dir) as stack:
            second_planner(stack)
            rt = Runtime(Settings(redis_url=stack.redis_url))
            started = time.monotonic()
            ids = [client.submit(AGENT, f"question {i}", runtime=rt) for i in range(runs)]
            all_started = wait_started(rt, ids, timeout_s)
            states = wait_ended(rt, ids, timeout_s)
            elapsed = time.monotonic() - started
            entries = sum(
                1
                for run_id in ids
                for _, e in rt.store.log.read(run_id)
                if e.kind == "rate_limited"
            )
        served = sorted(t for t in server.served if t >= all_started)
        span = served[-1] - served[0] if len(served) > 1 else 0.0
        return RateLimitRun(
            runs=runs,
            succeeded=sum(1 for s in states if s == "succeeded"),
            status_429=server.limited,
            throughput_per_s=(len(served) - 1) / span if span else 0.0,
            limit_per_s=float(limit_per_s),
            elapsed_s=round(elapsed, 2),
            rate_limited_entries=entries,
        )


def second_planner(stack: DevStack, timeout_s: float = 60.0) -> None:
    """Start another planner process beside the stack's own, and wait for both to answer."""
    first = stack.workers["planner"]
    stack.workers["planner-2"] = stack.start_worker("planner")
    stack.workers["planner"] = first  # start_worker files each under its service's name
    app: Celery = stack.celery()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5) or []
        if sum(1 for r in replies if next(iter(r)).startswith("planner-")) >= 2:
            return
    raise TimeoutError(f"the second planner did not answer within {timeout_s:g}s")


def wait_started(rt: Runtime, run_ids: list[str], timeout_s: float) -> float:
    """When (time.time()) every one of the runs had been created."""
    deadline = time.monotonic() + timeout_s
    missing = list(run_ids)
    while time.monotonic() < deadline:
        missing = [r for r in missing if rt.store.get(r) is None]
        if not missing:
            return time.time()
        time.sleep(0.05)
    raise TimeoutError(f"{len(missing)} of {len(run_ids)} runs never started")


def wait_ended(rt: Runtime, run_ids: list[str], timeout_s: float) -> list[str]:
    """Each run's terminal status, waiting for all of them up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    ended: dict[str, str] = {}
    while time.monotonic() < deadline:
        for run_id in run_ids:
            if run_id not in ended:
                state = rt.store.get(run_id)
                if state is not None and state.terminal:
                    ended[run_id] = str(state.status)
        if len(ended) == len(run_ids):
            return [ended[r] for r in run_ids]
        time.sleep(0.2)
    raise TimeoutError(f"{len(run_ids) - len(ended)} of {len(run_ids)} runs still going")


def line(limited: RateLimitRun, unlimited: RateLimitRun) -> str:
    return (
        f"rate-limit: {limited.runs} runs, 429s {limited.status_429} (limited) vs "
        f"{unlimited.status_429} (unlimited, {unlimited.runs} runs), throughput "
        f"{limited.share_of_limit:.0%} of the limit"
    )


def ratelimit_line(results: dict[str, dict[str, Any]]) -> str:
    """The line, from what ``run_both`` recorded."""
    limited, unlimited = (RateLimitRun(**results[k]) for k in ("limited", "unlimited"))
    return line(limited, unlimited)


def run_both(quick: bool, log_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """The limited and the unlimited measurement, as the bench results record them; the
    unlimited one with fewer runs, since its 429s cost retries (quick: 100 runs at 10 a
    second and 40; full: 200 at 8 a second and 60)."""
    runs, unlimited_runs, limit = (100, 40, 10) if quick else (200, 60, 8)
    limited = measure(runs, limit, limited=True, log_dir=log_dir)
    unlimited = measure(unlimited_runs, limit, limited=False, log_dir=log_dir)
    return {"limited": asdict(limited), "unlimited": asdict(unlimited)}


if __name__ == "__main__":
    print(ratelimit_line(run_both(quick="--quick" in sys.argv)))
