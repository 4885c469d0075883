"""select.poll under gevent: answered by the OS where no wait is needed, cooperative otherwise.

gevent's monkey-patching lasts for the life of a process, so each check runs in
a child Python that patches itself, as a gevent worker does.
"""

from __future__ import annotations

import select
import subprocess
import sys
import textwrap

from tether.worker import gevent_poll

PATCHED = """
from gevent import monkey
monkey.patch_all()
import gevent, select, socket
from tether.worker import gevent_poll
gevent_poll.install()
assert select.poll is gevent_poll.ReadyFirstPoll
"""


def _run_patched(body: str) -> str:
    script = PATCHED + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_unpatched_select_is_left_alone() -> None:
    before = select.poll
    gevent_poll.install()
    assert select.poll is before


def test_a_zero_timeout_poll_answers_without_running_the_hub() -> None:
    out = _run_patched("""
        ran = []
        a, b = socket.socketpair()
        gevent.spawn(ran.append, "other greenlet")
        p = select.poll()
        p.register(a, select.POLLIN)
        # gevent's own poll would switch to the hub here, which runs the spawned greenlet.
        assert p.poll(0) == [] and ran == [], ran
        b.sendall(b"x")
        assert p.poll(0) == [(a.fileno(), select.POLLIN)] and ran == []
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_closed_peer_is_reported_with_the_os_flags() -> None:
    # redis-py reads POLLRDHUP to tell a server that hung up from pending data.
    out = _run_patched("""
        a, b = socket.socketpair()
        p = select.poll()
        p.register(a, select.POLLIN | select.POLLRDHUP)
        b.close()
        [(fd, flags)] = p.poll(0)
        assert fd == a.fileno() and flags & select.POLLRDHUP, flags
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_poll_that_waits_lets_other_greenlets_run() -> None:
    out = _run_patched("""
        a, b = socket.socketpair()
        gevent.spawn_later(0.05, b.sendall, b"x")
        p = select.poll()
        p.register(a.fileno(), select.POLLIN)
        # The send runs in another greenlet: it can only happen if this wait yields.
        assert p.poll(5000) == [(a.fileno(), select.POLLIN)]
        p.unregister(a.fileno())
        p.register(b, select.POLLIN)
        assert p.poll(50) == []
        p.modify(b, select.POLLOUT)  # a socket with room to write is ready at once
        assert p.poll(0) == [(b.fileno(), select.POLLOUT)]
        print("ok")
    """)
    assert out.strip() == "ok"


def test_redis_clients_work_under_it(redis_url: str) -> None:
    out = _run_patched(f"""
        import redis
        client = redis.Redis.from_url({redis_url!r})
        jobs = [gevent.spawn(client.incr, "gevent_poll:count") for _ in range(50)]
        gevent.joinall(jobs, raise_error=True)
        assert int(client.get("gevent_poll:count")) == 50
        # A connection the server closed is found closed when next taken from the pool.
        client.client_kill_filter(_id=client.client_id())
        assert client.ping()
        print("ok")
    """)
    assert out.strip() == "ok"
