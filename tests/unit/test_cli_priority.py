"""`tether submit --priority` publishes the event's priority and refuses any other."""

from __future__ import annotations

from tests.unit.test_cli_commands import cli, published_events, run  # noqa: F401 (fixture)
from tether.runtime import Runtime


def test_submit_publishes_its_priority_and_refuses_an_unknown_one(cli: Runtime) -> None:  # noqa: F811
    code, out = run("submit", "calculator", "2+2", "--event-id", "ev-b", "--priority", "batch")
    assert code == 0, out
    code, out = run("submit", "calculator", "2+2", "--event-id", "ev-i")
    assert code == 0, out
    assert sorted((e["event_id"], e["priority"]) for e in published_events(cli)) == [
        ("ev-b", "batch"),
        ("ev-i", "interactive"),
    ]
    code, out = run("submit", "calculator", "2+2", "--priority", "urgent")
    assert code == 2
    assert "'urgent' is no priority" in out and "--priority" in out
    assert len(published_events(cli)) == 2
