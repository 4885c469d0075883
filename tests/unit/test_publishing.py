"""Publishing survives Redis losing kombu's binding keys (a restart without data)."""

from __future__ import annotations

from tether.runtime import Runtime


def test_publish_lands_after_redis_lost_its_bindings(runtime: Runtime) -> None:
    runtime.send_step("run_a", 0)
    assert runtime.store.client.llen("tether.plan") == 1

    # What a Redis restarted without its data looks like to a long-lived publisher.
    runtime.store.client.flushdb()
    runtime.send_step("run_a", 1)

    assert runtime.store.client.llen("tether.plan") == 1
