"""Every Redis key Tether uses, in one place.

A run's keys (its state, lists, log, budget, action results, escalations) carry
the run id as a hash tag, ``{run_...}``, so that on a Redis Cluster they share
one slot and every script over them runs on one node; a thread's keys carry the
thread id the same way.
"""

from __future__ import annotations

import itertools
import re
import string
from functools import cache

from redis.crc import key_slot

PREFIX = "tether"
# Run ids are ``run_`` and 20 hex digits (tether.store.run_id_for); action and
# escalation ids embed theirs, which puts them in their run's slot.
_RUN_ID = re.compile(r"run_[0-9a-f]{20}")

RUN_INDEX = f"{PREFIX}:runs"
# Unfinished runs, scored by their last commit: where the reconciler looks for stalls.
ACTIVE_RUNS = f"{PREFIX}:runs:active"
RECONCILER_LEASE = f"{PREFIX}:reconciler"
# run_id -> "step:count", how often the reconciler re-drove a run at its current step.
REDRIVES = f"{PREFIX}:runs:redrives"
LIFECYCLE_STREAM = f"{PREFIX}:events"
REJECTED_STREAM = f"{PREFIX}:rejected"
DEAD_STREAM = f"{PREFIX}:dead"
PENDING_ESCALATIONS = f"{PREFIX}:escalations:pending"
ALL_ESCALATIONS = f"{PREFIX}:escalations"
# Pending escalations by when they expire (tether.planner.reconcile ends their runs).
EXPIRING_ESCALATIONS = f"{PREFIX}:escalations:expiring"
# Webhook notifications of escalations, waiting for delivery (tether.notifications).
NOTIFICATIONS = f"{PREFIX}:notifications"
# Feedback recorded, per agent, version and score: JSON [agent, version, score] -> count,
# incremented by the feedback's own commit; the escalation service serves it as a counter.
FEEDBACK_COUNTS = f"{PREFIX}:feedback:counts"


def slot_tag(key: str) -> str:
    """What Redis Cluster hashes to place ``key``: its hash tag, else the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1)
    if start >= 0 and end > start + 1:
        return key[start + 1 : end]
    return key


def _tagged(identifier: str) -> str:
    """``identifier`` with the run id in it made its hash tag (the whole, if none)."""
    found = _RUN_ID.search(identifier)
    if found is None:
        return f"{{{identifier}}}"
    return f"{identifier[: found.start()]}{{{found.group()}}}{identifier[found.end() :]}"


def run(run_id: str) -> str:
    return f"{PREFIX}:run:{{{run_id}}}"


def run_log(run_id: str) -> str:
    return f"{run(run_id)}:log"


def run_messages(run_id: str) -> str:
    """List of the run's messages (ChatMessage JSON), appended by its commits."""
    return f"{run(run_id)}:messages"


def run_completed(run_id: str) -> str:
    """List of the run's completed actions (Observation JSON), appended by its commits."""
    return f"{run(run_id)}:completed"


def budget(run_id: str) -> str:
    return f"{run(run_id)}:budget"


def reservations(run_id: str) -> str:
    return f"{run(run_id)}:reservations"


def spill(key: str) -> str:
    """List of the writes a commit of ``key`` made to other slots of a Redis Cluster,
    until they are applied (tether.spill); in ``key``'s slot."""
    return f"{PREFIX}:spill:{{{slot_tag(key)}}}"


def spilled(key: str, write_id: str) -> str:
    """Set once the spilled writes ``write_id`` went into ``key``'s slot: once only.

    Its tag is a stand-in that hashes to that slot, not ``key``'s own tag, which may
    name a thread or a subject: forgetting one leaves no key that names it.
    """
    return f"{PREFIX}:spilled:{{{_slot_stand_ins()[key_slot(key.encode())]}}}:{write_id}"


@cache
def _slot_stand_ins() -> dict[int, str]:
    """For every cluster slot, a short string that hashes to it (about 0.1 s, once)."""
    found: dict[int, str] = {}
    for size in (1, 2, 3):
        for letters in itertools.product(string.ascii_letters + string.digits, repeat=size):
            found.setdefault(key_slot("".join(letters).encode()), "".join(letters))
            if len(found) == 16384:
                return found
    raise AssertionError("three letters stand in for every slot")


def action_result(action_id: str) -> str:
    return f"{PREFIX}:action:{_tagged(action_id)}"


def action_lock(action_id: str) -> str:
    return f"{action_result(action_id)}:lock"


def action_inflight(action_id: str) -> str:
    return f"{action_result(action_id)}:inflight"


def action_held(action_id: str) -> str:
    """What the executor last asked a human about the action (action_held_value): the
    planner takes a needs_human observation only where this says so."""
    return f"{action_result(action_id)}:held"


def action_held_value(kind: str, rerun_approval: str | None) -> str:
    """The kind of question and the attempt that asked it (the re-run approval it ran
    under; "" for the first), so a question about one attempt vouches for no other."""
    return f"{kind}|{rerun_approval or ''}"


def rejection(event_id: str) -> str:
    return f"{PREFIX}:rejected:{event_id}"


def dead_letter_seen(message_id: str) -> str:
    # In the dead-letter stream's slot: deadletters.lua writes both.
    return f"{PREFIX}:dead:seen:{{{DEAD_STREAM}}}:{message_id}"


def escalation(escalation_id: str) -> str:
    return f"{PREFIX}:escalation:{_tagged(escalation_id)}"


# Broker consumers (tether.transport): consumer id -> the list it consumes from.
CONSUMERS = f"{PREFIX}:consumers"


def consumer_alive(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}"


def consumer_landing(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}:landing"


def consumer_held(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}:held"


def consumer_recovering(consumer_id: str) -> str:
    return f"{PREFIX}:consumer:{consumer_id}:recovering"


# When consumers last swept for dead ones, and since when they have watched
# without a gap, in Redis time (tether.transport: liveness across a Redis outage).
CONSUMERS_CLOCK = f"{PREFIX}:consumers:clock"


def autonomy(agent: str, tool: str) -> str:
    """The earned-autonomy record of one agent's tool (tether.autonomy)."""
    return f"{PREFIX}:autonomy:{agent}:{tool}"


def eval_scenario(run_id: str) -> str:
    """An evaluation run's harness document: the scenario its eval: agent plays."""
    return f"{PREFIX}:eval:scenario:{run_id}"


# Conversation threads (tether.memory.threads) ------------------------------------------
# Thread ids by their last activity, for `tether threads list`.
THREADS = f"{PREFIX}:threads"
# Threads with events queued or a run going, by their last change: where the reconciler
# looks for a hand-over from one run to the next that went missing.
THREADS_BUSY = f"{PREFIX}:threads:busy"
# Threads whose next event waits for one published before it, by when the wait ends.
THREADS_GAPS = f"{PREFIX}:threads:gaps"


def thread_queue(thread_id: str) -> str:
    """List of event ids in publish order; the head is the thread's run or its next."""
    return f"{PREFIX}:thread:{{{thread_id}}}:queue"


def thread_events(thread_id: str) -> str:
    """Hash event id -> TaskEvent JSON of the events queued on the thread."""
    return f"{PREFIX}:thread:{{{thread_id}}}:events"


def thread_order(thread_id: str) -> str:
    """Sorted set event id -> publish time of the events queued on the thread."""
    return f"{PREFIX}:thread:{{{thread_id}}}:order"


def thread_seq(thread_id: str) -> str:
    """Hash: ``published`` (publishers' counter), ``started`` (highest sequence number
    given its run) and ``running`` (the event id given the thread last)."""
    return f"{PREFIX}:thread:{{{thread_id}}}:seq"


def thread_skipped(thread_id: str) -> str:
    """Sorted set of sequence numbers whose events intake rejected: no one waits for them."""
    return f"{PREFIX}:thread:{{{thread_id}}}:skipped"


def thread_turns(thread_id: str) -> str:
    """List of the thread's finished turns (JSON), oldest first."""
    return f"{PREFIX}:thread:{{{thread_id}}}:turns"


def thread_runs(thread_id: str) -> str:
    """Sorted set of the thread's run ids by when they ended."""
    return f"{PREFIX}:thread:{{{thread_id}}}:runs"


# Long-term memory (tether.memory.longterm) ------------------------------------------------
MEMORY_AGENTS = f"{PREFIX}:memory:agents"


def memory(agent: str, subject: str) -> str:
    """Hash key -> item JSON: what ``agent`` remembers about ``subject``."""
    return f"{PREFIX}:memory:{agent}:{subject}"


def memory_runs(agent: str, subject: str) -> str:
    """Sorted set of the runs of ``agent`` about ``subject`` (by start): where copies of
    what it remembers may be, for forgetting."""
    return f"{PREFIX}:memory-runs:{agent}:{subject}"


def notified(escalation_id: str, event: str, target: str) -> str:
    """Set once a notification reached one webhook: (escalation, event, webhook) once."""
    return f"{PREFIX}:notified:{escalation_id}:{event}:{target}"


def notify_reminder(escalation_id: str, event: str) -> str:
    """Set once ``event``, a reminder of a pending escalation, was queued (as notify_waiting)."""
    return f"{PREFIX}:notify:waiting:{{{NOTIFICATIONS}}}:{escalation_id}:{event}"


def notify_waiting(escalation_id: str) -> str:
    """Set when an escalation's "still waiting" notification was queued, once; in the
    notification stream's slot, since one script writes both."""
    return f"{PREFIX}:notify:waiting:{{{NOTIFICATIONS}}}:{escalation_id}"


# What a commit's spill entry may write (tether.spill): the indexes and streams that
# describe commits, a thread's history, and a run's log. Anything else in an entry
# was not put there by a commit, since a service that may append to a spill list
# must not get through it what its own rights refuse (run state, results, budgets).
_SPILLED_TO = {
    LIFECYCLE_STREAM,
    NOTIFICATIONS,
    RUN_INDEX,
    PENDING_ESCALATIONS,
    EXPIRING_ESCALATIONS,
    ALL_ESCALATIONS,
    FEEDBACK_COUNTS,
    THREADS,
    THREADS_BUSY,
    MEMORY_AGENTS,
}


def spillable(key: str) -> bool:
    return (
        key in _SPILLED_TO
        or key.startswith((f"{PREFIX}:autonomy:", f"{PREFIX}:thread:{{"))
        or (key.startswith(f"{PREFIX}:run:{{") and key.endswith("}:log"))
    )
