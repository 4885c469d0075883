"""Time limits as a planner runs them: under Celery's gevent pool, which drops the soft one."""

from __future__ import annotations

import time
from pathlib import Path

from tests.integration.helpers import wait_for
from tests.stacks import stop_in_background
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime

SOFT_S = 2
HARD_S = 30


def test_gevent_planner_step_stuck_past_the_soft_limit_is_interrupted(tmp_path: Path) -> None:
    outcome = tmp_path / "outcome.txt"
    env = {
        "STUCK_OUTCOME": str(outcome),
        "TETHER_PLANNER_POOL": "gevent",
        "TETHER_PLANNER_CONCURRENCY": "4",
        "TETHER_TASK_SOFT_TIME_LIMIT_S": str(SOFT_S),
        # Far above the soft limit: only the soft limit can end the step in time.
        "TETHER_TASK_TIME_LIMIT_S": str(HARD_S),
        "TETHER_VISIBILITY_TIMEOUT_S": str(HARD_S + 10),
        "TETHER_RUN_STALLED_AFTER_S": str(HARD_S + 10),
    }
    stack = DevStack(
        agent_modules=["tests.integration.hanging_agent"], env=env, log_dir=tmp_path / "logs"
    )
    try:
        assert stack.redis is not None
        stack.redis.start()
        stack.start_worker("planner")
        stack.wait_ready(["planner"], timeout_s=60)
        rt = Runtime(Settings(redis_url=stack.redis_url))

        submitted = time.monotonic()
        client.submit("hangs_forever", "answer me", runtime=rt)
        wait_for(outcome.exists, timeout_s=SOFT_S + 10, what="the stuck model call to end")
        took = time.monotonic() - submitted

        assert outcome.read_text().startswith("SoftTimeLimitExceeded"), outcome.read_text()
        assert f"soft time limit ({SOFT_S}s) exceeded" in outcome.read_text()
        assert took < HARD_S / 2, f"the step ended after {took:.1f}s, not at the soft limit"

        # A step past its soft limit runs again at once (safe to run twice), rather than
        # lying dead until the reconciler finds its run stalled (HARD_S + 10 s).
        run_id = client.submit("hangs_once", "answer me", runtime=rt)
        done = client.wait(run_id, timeout_s=HARD_S / 2, runtime=rt)
        assert done.status == "succeeded", done.error
        assert done.result == "answered on the retry"
    finally:
        # Its own Redis: nothing waits on its workers' warm shutdown.
        stop_in_background(stack)
