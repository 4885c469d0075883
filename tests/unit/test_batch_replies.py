"""A held write whose reply someone waits for (WriteBatch.defer_then), on a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from tether.store.batch import WriteBatch


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_the_reply_comes_with_the_next_round_trip_in_order(client: redis.Redis) -> None:
    """Mutant: replies handed to the wrong callbacks (the places of other held writes)."""
    batch = WriteBatch(client)
    batch.begin()
    replies: list[tuple[str, Any]] = []
    assert batch.defer("set", "k:plain", "p")
    assert batch.defer_then(lambda r: replies.append(("first", r)), "set", "k:a", "1", nx=True)
    assert batch.defer_then(lambda r: replies.append(("second", r)), "set", "k:a", "2", nx=True)
    assert replies == []  # nothing sent yet
    (read,) = batch.run(lambda pipe: pipe.get("k:a"))
    assert read == "1"
    assert replies == [("first", True), ("second", None)]
    batch.end()
    assert replies == [("first", True), ("second", None)]  # each reply handed over once


def test_writes_a_callback_holds_back_go_out_before_the_task_ends(client: redis.Redis) -> None:
    """What the winner of a race writes once it knows it won (on a Redis Cluster, its
    lifecycle line) is not dropped when the reply came with the task's last round trip.
    Mutant: flush sending once, not until nothing is held."""
    batch = WriteBatch(client)
    batch.begin()

    def won(reply: Any) -> None:
        if reply:
            assert batch.defer("rpush", "k:won", "line")

    assert batch.defer_then(won, "set", "k:result", "r", nx=True)
    batch.end()
    assert client.lrange("k:won", 0, -1) == ["line"]
    assert not batch.holding


def test_an_error_reply_is_raised_and_handed_to_no_one(client: redis.Redis) -> None:
    batch = WriteBatch(client)
    client.set("k:text", "not a list")
    batch.begin()
    replies: list[Any] = []
    assert batch.defer_then(replies.append, "rpush", "k:text", "x")
    assert batch.defer_then(replies.append, "set", "k:other", "y")
    with pytest.raises(ResponseError):
        batch.flush()
    assert replies == [True]  # the write that went in is still answered
    batch.end()


def test_outside_a_task_nothing_is_held(client: redis.Redis) -> None:
    batch = WriteBatch(client)
    assert not batch.defer_then(lambda reply: None, "set", "k:x", "1")
    assert client.get("k:x") is None
