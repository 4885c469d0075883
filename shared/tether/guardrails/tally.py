"""Guardrail outcomes in the stats rollups (`tether stats`), per agent and version, in the
buckets of the run's creation time as every other figure of a run.

Called where the commit that recorded the outcomes won (the run's creation, the step,
the observation), so a redelivered message counts nothing twice (invariant 6).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from redis.client import Pipeline

from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.rollups import HOUR_S, MINUTE_S, ROLLUP_TTL_S, bucket_start, field
from tether.store.state import RunState
from tether.transport.wire import GuardrailFinding

PREFIX = "guardrail:"


def figure(finding: GuardrailFinding) -> str:
    """The rollup figure of one outcome: ``guardrail:<place>:<outcome>``."""
    return f"{PREFIX}{finding.place}:{finding.outcome}"


def count(batch: WriteBatch, state: RunState, findings: Sequence[GuardrailFinding]) -> None:
    """Add ``findings`` of the run ``state`` to the rollups, with the next round trip."""
    tally = Counter(figure(f) for f in findings)
    if not tally:
        return

    def build(pipe: Pipeline) -> None:
        for size_s, granularity in ((MINUTE_S, "m"), (HOUR_S, "h")):
            key = keys.rollup(granularity, bucket_start(state.created_at, size_s))
            for name, n in tally.items():
                pipe.hincrby(key, field(state.agent, state.agent_version, name), n)
            pipe.expire(key, ROLLUP_TTL_S)

    batch.run(build)
