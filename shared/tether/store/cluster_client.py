"""A Redis Cluster client that rides out a node's restart, as the one-node client does.

redis-py's RedisCluster tries a command again at once when a node is down: a
refused connection is retried with no pause at all, CLUSTERDOWN a quarter of a
second apart, so a node that takes a second or two to come back fails the
command, and with it the task that sent it (the chaos run on a cluster dead-
lettered a hundred messages that way). Every write Tether makes is safe to
repeat (tether.store.connection.connect), so here a command or a whole pipeline that meets
a node down is sent again with backoff, for up to about a minute, as
``redis.Redis`` does with the Retry that connect gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ClusterDownError, SlotNotCoveredError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

# What a node that is restarting, or a cluster that has not yet seen it back, answers.
NODE_DOWN = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, SlotNotCoveredError)
RIDE_OUT_S = 60.0
T = TypeVar("T")


def _ride_out(call: Callable[[], T]) -> T:
    try:
        return call()
    except NODE_DOWN:
        pass  # the common case above builds no retry loop: this is every command's path
    riding = Retrying(
        retry=retry_if_exception_type(NODE_DOWN),
        wait=wait_exponential(multiplier=0.05, max=2.0),
        stop=stop_after_delay(RIDE_OUT_S),
        reraise=True,
    )
    return riding(call)


class RidingCluster(RedisCluster):
    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        command = super().execute_command
        return _ride_out(lambda: command(*args, **kwargs))  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        pipe: ClusterPipeline = super().pipeline(transaction, shard_hint)  # type: ignore[no-untyped-call]
        # Built by RedisCluster with all its settings; only execute() differs.
        pipe.__class__ = RidingPipeline
        return pipe


class RidingPipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        # A failed execute() empties the pipeline: each try stages the commands again.
        queue = self._execution_strategy.command_queue
        staged = [(command.args, command.options) for command in queue]

        def attempt() -> list[Any]:
            if not self._execution_strategy.command_queue:
                for args, options in staged:
                    self.pipeline_execute_command(*args, **options)  # type: ignore[no-untyped-call]
            replies: list[Any] = ClusterPipeline.execute(self, raise_on_error)
            down = next((r for r in replies if isinstance(r, NODE_DOWN)), None)
            if down is not None:
                raise down  # the whole pipeline again: what ran already is safe to repeat
            return replies

        return _ride_out(attempt)
