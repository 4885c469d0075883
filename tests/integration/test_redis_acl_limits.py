"""The deploy ACL (deploy/redis/users.acl) lets each service do what the production
controls need: admission under caps (planner: admission.lua, the reconciler's sweep),
shared rate limits (planner: a model's limit; executor: a tool's), deferred messages
(executor and planner write them, the planner's publisher takes them). Real workers
logged in as their own users, on a real redis-server started with the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_redis_acl import SERVICES, acl_redis, passwords  # noqa: F401
from tether import client
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.runtime import Runtime
from tether.store import keys

RUNS = 6


@pytest.mark.timeout(240)
def test_caps_rate_limits_and_deferred_messages_work_under_the_deploy_acl(
    acl_redis: int,  # noqa: F811
    passwords: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    def url(user: str) -> str:
        return f"redis://{user}:{passwords[user]}@127.0.0.1:{acl_redis}/0"

    calls = tmp_path / "calls.txt"
    # One request a second for the model, four calls a second for the tool, two runs in
    # flight: every run waits for admission, and steps and actions are deferred.
    limits = {"scripted:tool_limited": {"requests": 1, "window_s": 1.0, "burst": 1.0}}
    with DevStack(
        redis_url=url("operator"),
        service_urls={service: url(service) for service in SERVICES},
        agent_modules=["tests.ratelimit_agents"],
        env={
            "RATE_TOOL_LOG": str(calls),
            "TETHER_MAX_RUNS_IN_FLIGHT": "2",
            "TETHER_MODEL_RATE_LIMITS": json.dumps(limits),
            "TETHER_RECONCILE_INTERVAL_S": "1",
        },
        log_dir=tmp_path,
        concurrency=4,
    ) as stack:
        runtime = Runtime(Settings(redis_url=stack.redis_url, max_runs_in_flight=2))
        ids = [client.submit("tool_limited", f"key {i}", runtime=runtime) for i in range(RUNS)]
        ended = [client.wait(run_id, timeout_s=120, runtime=runtime) for run_id in ids]
        assert [s.status for s in ended] == ["succeeded"] * RUNS, [s.error for s in ended]
        kinds = {e.kind for run_id in ids for _, e in runtime.store.log.read(run_id)}
        assert "rate_limited" in kinds
        limited = {
            e.data["limit"]
            for run_id in ids
            for _, e in runtime.store.log.read(run_id)
            if e.kind == "rate_limited"
        }
        assert "model:tether.scripted|scripted:tool_limited" in limited, limited
        operator = runtime.store.client
        # Every slot was given back, and nothing waits or stays deferred.
        assert operator.hlen(keys.ADMISSION_RUNNING) == 0
        assert operator.zcard(keys.ADMISSION_WAITING_INTERACTIVE) == 0
        assert operator.zcard(keys.DEFERRED) == 0
        logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
        assert "NOPERM" not in logs
    assert len(calls.read_text().split()) == RUNS
