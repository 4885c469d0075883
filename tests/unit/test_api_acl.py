"""The console serves under the deploy's Redis ACL, as the operator user (docker-compose.yml).

The Redis is started by the compose file's own start script with deploy/redis/users.acl
(the fixtures of tests/integration/test_redis_acl.py).
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.integration.test_redis_acl import acl_redis, passwords
from tether.api import create_app
from tether.config import Settings
from tether.runtime import Runtime
from tether.store import keys
from tether.transport.wire import EventKind

__all__ = ["acl_redis", "passwords"]  # fixtures, used by name

RUN = "run_" + "a" * 20


def test_the_operator_user_may_serve_runs_and_their_live_events(
    acl_redis: int, passwords: dict[str, str]
) -> None:
    url = f"redis://operator:{passwords['operator']}@127.0.0.1:{acl_redis}/0"
    rt = Runtime(Settings(redis_url=url))
    rt.store.client.hset(keys.run(RUN), "status", "succeeded")
    for kind in (EventKind.run_started, EventKind.run_finished):
        rt.store.log.append(RUN, kind, 0)
    rt.store.flush()
    app = create_app(rt, anonymous=True, include_console=False)
    # Anonymous use answers requests from loopback only.
    with TestClient(app, client=("127.0.0.1", 50000)) as http:
        with http.stream("GET", f"/v1/runs/{RUN}/events") as reply:
            assert reply.status_code == 200
            events = [line for line in reply.iter_lines() if line.startswith("event:")]
        assert events == ["event: run_started", "event: run_finished"]
        assert http.get("/v1/queues").status_code == 200
        assert http.get("/readyz").status_code == 200
