"""Recovery after SIGKILL, with default settings: `python -m bench.recovery`.

A stack with every delivery setting at its default (visibility timeout 600 s,
stall threshold 300 s) runs a long tool call and then a slow model call; the
executor's whole process group is SIGKILLed mid-tool, and later the planner's
mid-model-call, each restarted at once as a supervisor would. Recovery is the
time from the kill to the run's next commit; the figure printed is the worse of
the two, against the 30 s target.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime

TARGET_S = 30.0


def _wait(condition: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise SystemExit(f"recovery: timed out waiting for {what}")


def _kill(stack: DevStack, service: str) -> float:
    process = stack.workers[service]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = time.monotonic()
    stack.start_worker(service)
    return killed


def measure(logs: Path | None = None) -> dict[str, float]:
    marks = Path(tempfile.mkdtemp(prefix="tether-recovery-"))
    with DevStack(
        agent_modules=["bench.agents"],
        concurrency=1,
        env={"BENCH_MARKS": str(marks)},
        log_dir=logs,
    ) as stack:
        rt = Runtime(Settings(redis_url=stack.redis_url))
        run_id = client.submit("bench_surveyor", "survey site-1", runtime=rt)

        def version() -> int:
            state = rt.store.get(run_id)
            return state.version if state else 0

        _wait(lambda: (marks / f"{run_id}.tool").exists(), "the tool call to start")
        before = version()
        killed = _kill(stack, "executor")
        _wait(lambda: version() > before, "the run to go on after the executor died", 120)
        executor_s = time.monotonic() - killed

        _wait(lambda: (marks / "site-1.answer").exists(), "the model call to start")
        before = version()
        killed = _kill(stack, "planner")
        _wait(lambda: version() > before, "the run to go on after the planner died", 120)
        planner_s = time.monotonic() - killed
        state = rt.store.load(run_id)
        if state.status != "succeeded":
            raise SystemExit(f"recovery: the run ended {state.status}: {state.error}")
    return {"executor_s": round(executor_s, 1), "planner_s": round(planner_s, 1)}


def recovery_line(figures: dict[str, float]) -> str:
    worst = max(figures.values())
    return (
        f"recovery: {worst:g} s after SIGKILL (default settings); executor mid-tool "
        f"{figures['executor_s']:g} s, planner mid-model-call {figures['planner_s']:g} s; "
        f"target <= {TARGET_S:g} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--logs", type=Path, default=None, help="keep worker logs here")
    args = parser.parse_args(argv)
    figures = measure(args.logs)
    print(recovery_line(figures))
    return 0 if max(figures.values()) <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
