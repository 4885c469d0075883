"""A run's event log: every decision point of the run, in a Redis stream of its own,
and one line per entry in the lifecycle stream tether:events."""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.client import Pipeline

from tether.observability.redact import get_redactor
from tether.store import keys
from tether.store.batch import WriteBatch
from tether.store.known import KnownStates
from tether.store.versioned import Append
from tether.transport.wire import EventKind, RunEvent

#: How many entries the lifecycle stream keeps (about; trimmed as it is written).
LIFECYCLE_MAXLEN = 100_000
StreamEntries = list[tuple[str, dict[str, str]]]


def log_appends(event: RunEvent) -> list[Append]:
    """An event's entries: the run's own log, and one line in the lifecycle stream.

    Every entry of the event log is written through here, so this is where
    secrets (tether.observability.redact) leave it; the common case, no secret, costs one scan.
    """
    doc = event.model_dump_json()
    redactor = get_redactor()
    if redactor.found(doc):
        doc = event.model_copy(update={"data": redactor.value(event.data)}).model_dump_json()
    return [
        Append(keys.run_log(event.run_id), {"event": doc}),
        Append(
            keys.LIFECYCLE_STREAM,
            {"run_id": event.run_id, "kind": event.kind, "step": event.step},
            maxlen=LIFECYCLE_MAXLEN,
        ),
    ]


class EventLog:
    """Appends to runs' event logs and reads them back.

    Entries that describe a commit are written by the commit itself (RunStore.update's
    ``log``); ``append`` is for what happens beside commits (a duplicate delivery, a
    tool call, a dead letter).
    """

    def __init__(self, client: redis.Redis, batch: WriteBatch, known: KnownStates) -> None:
        self._client = client
        self._batch = batch
        self._known = known

    def append(self, run_id: str, kind: EventKind, step: int, /, **data: Any) -> RunEvent:
        """Append to the run's event log and the lifecycle stream.

        Inside a task the append rides along with the next round trip; once the
        run has ended (as far as this process knows) it goes out at once.
        """
        declared = EventKind.__members__.get(str(kind))
        if declared is None:
            # Reading tolerates kinds it does not know (old logs); writing one is a typo.
            raise ValueError(f"event kind {kind!r} for run {run_id} is not an EventKind member")
        event = RunEvent(run_id=run_id, kind=declared, step=step, data=data)
        appends = log_appends(event)
        known = self._known.recall(run_id)
        held = (known is None or not known.terminal) and all(
            self._batch.defer("xadd", a.stream, a.fields, **a.xadd_kwargs()) for a in appends
        )
        if held:
            return event

        def build(pipe: Pipeline) -> None:
            for a in appends:
                pipe.xadd(a.stream, a.fields, **a.xadd_kwargs())  # type: ignore[arg-type]

        self._batch.run(build)
        return event

    def read(self, run_id: str, after: str = "-") -> list[tuple[str, RunEvent]]:
        """The run's event log from ``after`` (exclusive when it is an id) onwards.

        Each ``model_call`` entry is written with only the messages that came
        after the model's previous answer (``messages_from``); here it gets the
        whole input it saw back, as ``messages``.
        """
        start = after if after == "-" else f"({after}"
        self._batch.flush()
        entries = cast(StreamEntries, self._client.xrange(keys.run_log(run_id), min=start))
        events = [(entry_id, RunEvent.model_validate_json(f["event"])) for entry_id, f in entries]
        if after != "-" and any(_input_from(event) for _, event in events):
            # Its model's input starts in entries before ``after``: read them too.
            shown = {entry_id for entry_id, _ in events}
            return [entry for entry in self.read(run_id) if entry[0] in shown]
        return _whole_inputs(events)


def _input_from(event: RunEvent) -> int:
    """Where a model call's logged messages start in what it saw (0: they are all of it)."""
    if event.kind != EventKind.model_call:
        return 0
    return int(event.data.get("messages_from") or 0)


def _whole_inputs(events: list[tuple[str, RunEvent]]) -> list[tuple[str, RunEvent]]:
    """``events`` with each model call's ``messages`` made whole from the calls before it."""
    seen: list[Any] = []
    whole = []
    for entry_id, event in events:
        if event.kind == EventKind.model_call:
            start = _input_from(event)
            if start <= len(seen):
                seen = [*seen[:start], *(event.data.get("messages") or [])]
                data = {k: v for k, v in event.data.items() if k != "messages_from"}
                event = event.model_copy(update={"data": {**data, "messages": seen}})
        whole.append((entry_id, event))
    return whole
