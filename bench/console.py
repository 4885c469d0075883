"""How fast the console serves its busiest pages with many runs stored.

Runs are written through the run store's own commits (RunStore.create, then the ending
as an update carrying the rollup writes of tether.planner.lifecycle.finish), created
over the last day by two agents of two versions each; some wait for a human, each
with a pending escalation, for the inbox. Then the runs page, the inbox and the stats
page (24 hours, the console's default) are requested through the real ASGI app
(tether.api.create_app, signed in as a viewer) by httpx's in-process transport, and
each page's p95 is reported.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from bench.driver import log
from bench.plan import Plan, Results
from tether.api import create_app
from tether.config import Settings
from tether.dev.redis_server import RedisServer
from tether.escalation import operators, records
from tether.runtime import Runtime
from tether.store import rollups
from tether.store.runs import run_id_for
from tether.store.state import HumanWait, RunState, RunStatus
from tether.transport.wire import Escalation, EscalationKind, TaskEvent

PAGES = {"runs page": "/console/", "inbox": "/console/inbox", "stats page": "/console/stats"}
ENDED = [RunStatus.succeeded] * 8 + [RunStatus.failed, RunStatus.budget_exhausted]


def store_runs(rt: Runtime, count: int, waiting: int, seed: int = 7) -> None:
    """``count`` runs created over the last day, ``waiting`` of them waiting for a human."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for n in range(count):
        created = now - timedelta(seconds=rng.uniform(60, 86400 - 120))
        agent, version = rng.choice(["support", "billing"]), rng.choice(["v1", "v2"])
        event = TaskEvent(event_id=f"bench-{n}", agent=agent, input=f"task {n}")
        run_id = run_id_for(event.event_id)
        rt.store.create(
            event,
            RunState(
                run_id=run_id,
                event_id=event.event_id,
                agent=agent,
                agent_version=version,
                goal=event.input,
                created_at=created,
            ),
        )
        if n < waiting:
            _wait_for_a_human(rt, run_id, agent, created)
            continue
        status = rng.choice(ENDED)
        ended: dict[str, Any] = {
            "status": status,
            "step": rng.randint(1, 6),
            "result": "done" if status == RunStatus.succeeded else None,
            "finished_at": created + timedelta(seconds=rng.lognormvariate(1.5, 0.8)),
        }
        rt.store.budgets.reserve(run_id, "model:0", tokens=400, cost_usd=rng.uniform(0, 0.02))
        rt.store.update(
            run_id,
            lambda s, ended=ended: s.model_copy(update=ended),  # type: ignore[misc]
            side_writes=lambda s, run_id=run_id: rollups.ending_writes(  # type: ignore[misc]
                s, rollups.spent(rt.store.batch, run_id), escalated=False
            ),
        )


def _wait_for_a_human(rt: Runtime, run_id: str, agent: str, created: datetime) -> None:
    escalation_id = f"esc_{run_id}"
    wait = HumanWait(
        escalation_id=escalation_id, kind=EscalationKind.model_uncertain, reason="which plan?"
    )
    rt.store.update(
        run_id,
        lambda s: s.model_copy(
            update={"status": RunStatus.waiting_human, "awaiting_human": [wait]}
        ),
    )
    records.open_escalation(
        rt,
        Escalation(
            escalation_id=escalation_id,
            run_id=run_id,
            agent=agent,
            kind=EscalationKind.model_uncertain,
            reason="which plan does the customer mean?",
            created_at=created,
        ),
    )


def _signed_in(rt: Runtime, token: str) -> TestClient:
    browser = TestClient(create_app(rt), follow_redirects=False)
    form = re.search(r'name="csrf" value="([^"]+)"', browser.get("/console/sign-in").text)
    if form is None:
        raise RuntimeError("the console's sign-in page has no CSRF token")
    signed = browser.post(
        "/console/sign-in", data={"csrf": form[1], "token": token, "next": "/console/"}
    )
    if signed.status_code != 303:
        raise RuntimeError(f"signing in to the console failed: {signed.status_code}")
    return browser


def measure_console(plan: Plan, res: Results) -> None:
    with RedisServer() as server, tempfile.TemporaryDirectory() as home:
        token, key = operators.new_token()
        people = Path(home) / "operators.json"
        people.write_text(
            json.dumps({"operators": [{"name": "bench", "key_sha256": key, "role": "viewer"}]})
        )
        rt = Runtime(Settings(redis_url=server.url, operators_file=str(people)))
        started = time.monotonic()
        store_runs(rt, plan.console_runs, plan.console_waiting)
        stored_s = time.monotonic() - started
        log(f"console: {plan.console_runs} runs stored in {stored_s:.1f} s")
        p95: dict[str, float] = {}
        with _signed_in(rt, token) as browser:
            for name, path in PAGES.items():
                for _ in range(plan.console_warmup):
                    browser.get(path).raise_for_status()
                took: list[float] = []
                for _ in range(plan.console_requests):
                    at = time.perf_counter()
                    browser.get(path).raise_for_status()
                    took.append((time.perf_counter() - at) * 1000)
                p95[name] = round(statistics.quantiles(took, n=20, method="inclusive")[-1], 1)
    res.console = {
        "runs": plan.console_runs,
        "waiting_for_a_human": plan.console_waiting,
        "requests_per_page": plan.console_requests,
        "stored_s": round(stored_s, 1),
        "p95_ms": p95,
    }
    print(console_line(res.console), flush=True)


def console_line(console: dict[str, Any]) -> str:
    p95 = console["p95_ms"]
    return (
        f"console: runs page p95 {p95['runs page']:.0f} ms, inbox p95 {p95['inbox']:.0f} ms, "
        f"stats page p95 {p95['stats page']:.0f} ms with {console['runs']:,} runs stored"
    )
