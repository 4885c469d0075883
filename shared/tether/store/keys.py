"""Every Redis key Tether uses, in one place.

A run's keys (its state, lists, log, budget, action results, escalations) carry
the run id as a hash tag, ``{run_...}``, so that on a Redis Cluster they share
one slot and every script over them runs on one node; a thread's keys carry the
thread id the same way.

docs/reference/redis-keys.md is generated from this module (docs/gen_reference.py):
each key's ``#:`` comment or docstring starts with its Redis type, then a colon and
what it holds; a ``# Title ----`` comment starts a section of that page.
"""

from __future__ import annotations

import itertools
import re
import string
from functools import cache

from redis.crc import key_slot

PREFIX = "tether"
# Run ids are ``run_`` and 20 hex digits (tether.store.runs.run_id_for); action and
# escalation ids embed theirs, which puts them in their run's slot.
_RUN_ID = re.compile(r"run_[0-9a-f]{20}")

# Runs, their actions and escalations ----------------------------------------------------
#: sorted set: run ids by creation time.
RUN_INDEX = f"{PREFIX}:runs"
#: sorted set: unfinished run ids by their last commit, where the reconciler looks for
#: stalled runs.
ACTIVE_RUNS = f"{PREFIX}:runs:active"
#: string: the lease of the planner process that sweeps for stalled runs.
RECONCILER_LEASE = f"{PREFIX}:reconciler"
#: hash: run id -> "step:count", how often the reconciler re-drove the run at its
#: current step.
REDRIVES = f"{PREFIX}:runs:redrives"
#: stream: lifecycle events of all runs (capped at about 100,000 entries).
LIFECYCLE_STREAM = f"{PREFIX}:events"
#: stream: events that were refused, with the reason.
REJECTED_STREAM = f"{PREFIX}:rejected"
#: stream: dead letters: messages that could not be parsed, failed past their retries,
#: or were delivered more than TETHER_MAX_DELIVERIES times.
DEAD_STREAM = f"{PREFIX}:dead"
#: sorted set: escalations still pending.
PENDING_ESCALATIONS = f"{PREFIX}:escalations:pending"
#: sorted set: all escalations.
ALL_ESCALATIONS = f"{PREFIX}:escalations"
#: sorted set: pending escalations by when they expire (tether.planner.reconcile ends
#: their runs).
EXPIRING_ESCALATIONS = f"{PREFIX}:escalations:expiring"
#: stream: escalation notifications for the webhooks, written by the commit they report
#: and waiting for delivery (tether.escalation.webhooks).
NOTIFICATIONS = f"{PREFIX}:notifications"
#: hash: feedback recorded, JSON [agent, version, score] -> count, incremented by the
#: feedback's own commit; the escalation service serves it as tether_feedback_total.
FEEDBACK_COUNTS = f"{PREFIX}:feedback:counts"


def rollup(granularity: str, bucket_start: int) -> str:
    """hash: what the runs created in one minute (``m``) or hour (``h``) from
    ``bucket_start`` (epoch seconds) came to, "agent<US>version<US>figure" -> count,
    written by each run's ending commit and each feedback's (tether.store.rollups)."""
    return f"{PREFIX}:rollup:{granularity}:{bucket_start}"


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
    """hash {doc, version, status, messages, completed, generation, commit}: the run's
    state (RunState) less its messages and completed actions, its version, how many
    entries of those two lists it counts, and a token naming the commit that wrote it
    (a reservation sent with a commit is made only while it holds that token)."""
    return f"{PREFIX}:run:{{{run_id}}}"


def runs_of_kind(kind: str) -> str:
    """sorted set: the run ids of one population (production, eval or shadow) by creation
    time, written by the commit that creates each run (tether.store.indexes)."""
    return f"{PREFIX}:runs:kind:{kind}"


def runs_of_agent(kind: str, agent: str) -> str:
    """sorted set: one agent's run ids of one population by creation time, written by the
    commit that creates each run."""
    return f"{PREFIX}:runs:kind:{kind}:agent:{agent}"


def run_forks(run_id: str) -> str:
    """sorted set: the runs forked from this one (tether.planner.fork), by creation time."""
    return f"{run(run_id)}:forks"


def runs_of_status(kind: str, status: str) -> str:
    """sorted set: the run ids of one population in one status by creation time, moved
    from one status to the next by the commit that changes it; ``in_progress`` holds both
    running and waiting_tools, which a run goes between at every step."""
    return f"{PREFIX}:runs:status:{status}:kind:{kind}"


def runs_of_agent_status(kind: str, agent: str, status: str) -> str:
    """sorted set: one agent's run ids of one population in one status by creation time,
    moved by the commit that changes it."""
    return f"{PREFIX}:runs:status:{status}:kind:{kind}:agent:{agent}"


def run_log(run_id: str) -> str:
    """stream: the run's event log, every decision point (its audit trail)."""
    return f"{run(run_id)}:log"


def run_messages(run_id: str) -> str:
    """list: the run's messages (ChatMessage JSON), appended by its commits."""
    return f"{run(run_id)}:messages"


def run_completed(run_id: str) -> str:
    """list: the run's completed actions (Observation JSON), appended by its commits."""
    return f"{run(run_id)}:completed"


def budget(run_id: str) -> str:
    """hash: the run's limits, its start time, what it has used, and a marker per
    reservation and settlement already applied ('reserve:<id>', 'settle:<id>')."""
    return f"{run(run_id)}:budget"


def reservations(run_id: str) -> str:
    """set: the granted budget reservations a commit requires ('reserve:<id>': a step's
    tool calls), and every marker of a budget opened before markers moved to its hash."""
    return f"{run(run_id)}:reservations"


def run_keys(run_id: str) -> list[str]:
    """The keys one run owns: its terminal commit sets them all to expire, and forgetting
    the run deletes them."""
    return [
        run(run_id),
        run_messages(run_id),
        run_completed(run_id),
        run_log(run_id),
        budget(run_id),
        reservations(run_id),
    ]


def spill(key: str) -> str:
    """list: on a Redis Cluster only, the writes a commit of ``key`` made to other
    slots, until they are applied (tether.store.spill); in ``key``'s slot."""
    return f"{PREFIX}:spill:{{{slot_tag(key)}}}"


def spilled(key: str, write_id: str) -> str:
    """string: on a Redis Cluster only, set (for an hour) once the spilled writes
    ``write_id`` went into ``key``'s slot, so that they go in once only.

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
    """string: the stored result (Observation) of one tool action; its first writer wins."""
    return f"{PREFIX}:action:{_tagged(action_id)}"


def action_lock(action_id: str) -> str:
    """string: a lease held (and renewed) while an executor runs the action."""
    return f"{action_result(action_id)}:lock"


def action_inflight(action_id: str) -> str:
    """string: left before a non-idempotent tool starts; with no result beside it, the
    attempt died mid-call."""
    return f"{action_result(action_id)}:inflight"


def action_held(action_id: str) -> str:
    """string: what the executor last asked a human about the action (action_held_value):
    the planner takes a needs_human observation only where this says so."""
    return f"{action_result(action_id)}:held"


def action_held_value(kind: str, rerun_approval: str | None) -> str:
    """The kind of question and the attempt that asked it (the re-run approval it ran
    under; "" for the first), so a question about one attempt vouches for no other."""
    return f"{kind}|{rerun_approval or ''}"


def rejection(event_id: str) -> str:
    """string: why the event was refused (tether.client.rejection)."""
    return f"{PREFIX}:rejected:{event_id}"


def dead_letter_seen(message_id: str) -> str:
    """string: the message already has its dead letter, one however often it was
    delivered; in the dead-letter stream's slot, since deadletters.lua writes both."""
    return f"{PREFIX}:dead:seen:{{{DEAD_STREAM}}}:{message_id}"


def escalation(escalation_id: str) -> str:
    """hash {doc, version, closed}: one escalation and, once made, its decision; closed
    once its run ended first."""
    return f"{PREFIX}:escalation:{_tagged(escalation_id)}"


# Broker consumers (tether.transport.consumers) -----------------------------------------
#: hash: broker consumer id -> the queue it takes messages from.
CONSUMERS = f"{PREFIX}:consumers"


def consumer_alive(consumer_id: str) -> str:
    """string: the consumer's heartbeat, renewed every 2 s, gone 10 s after its worker died."""
    return f"{PREFIX}:consumer:{consumer_id}"


def consumer_landing(consumer_id: str) -> str:
    """list: messages the consumer took but has not recorded yet."""
    return f"{PREFIX}:consumer:{consumer_id}:landing"


def consumer_held(consumer_id: str) -> str:
    """set: the delivery tags the consumer holds unacknowledged."""
    return f"{PREFIX}:consumer:{consumer_id}:held"


def consumer_recovering(consumer_id: str) -> str:
    """string: the claim of the consumer that returns this dead one's messages to their
    queues; a claim that lapses leaves the rest to the next recoverer."""
    return f"{PREFIX}:consumer:{consumer_id}:recovering"


#: hash: when consumers last swept for dead ones, and since when they have watched
#: without a gap, in Redis time: after a gap (Redis away) no consumer is judged dead
#: until all have had a full window to beat again.
CONSUMERS_CLOCK = f"{PREFIX}:consumers:clock"


# Rollout and evaluation ------------------------------------------------------------------


def autonomy(agent: str, tool: str) -> str:
    """hash: the earned-autonomy record of one agent's tool (tether.rollout.autonomy)."""
    return f"{PREFIX}:autonomy:{agent}:{tool}"


def eval_scenario(run_id: str) -> str:
    """string: an evaluation run's harness document, the scenario its eval: agent plays."""
    return f"{PREFIX}:eval:scenario:{run_id}"


# Conversation threads (tether.memory.threads) ------------------------------------------
#: sorted set: thread ids by their last activity, for `tether threads list`.
THREADS = f"{PREFIX}:threads"
#: sorted set: threads with events queued or a run going, by their last change: where
#: the reconciler looks for a hand-over from one run to the next that went missing.
THREADS_BUSY = f"{PREFIX}:threads:busy"
#: sorted set: threads whose next event waits for one published before it, by when the
#: wait ends.
THREADS_GAPS = f"{PREFIX}:threads:gaps"


def thread_queue(thread_id: str) -> str:
    """list: event ids in publish order; the head is the thread's run or its next."""
    return f"{PREFIX}:thread:{{{thread_id}}}:queue"


def thread_events(thread_id: str) -> str:
    """hash: event id -> TaskEvent JSON of the events queued on the thread."""
    return f"{PREFIX}:thread:{{{thread_id}}}:events"


def thread_order(thread_id: str) -> str:
    """sorted set: event id -> publish time of the events queued on the thread."""
    return f"{PREFIX}:thread:{{{thread_id}}}:order"


def thread_seq(thread_id: str) -> str:
    """hash: ``published`` (publishers' counter), ``started`` (highest sequence number
    given its run) and ``running`` (the event id given the thread last)."""
    return f"{PREFIX}:thread:{{{thread_id}}}:seq"


def thread_skipped(thread_id: str) -> str:
    """sorted set: sequence numbers whose events intake rejected; no one waits for them."""
    return f"{PREFIX}:thread:{{{thread_id}}}:skipped"


def thread_turns(thread_id: str) -> str:
    """list: the thread's history, one JSON turn per ended run, oldest first."""
    return f"{PREFIX}:thread:{{{thread_id}}}:turns"


def thread_runs(thread_id: str) -> str:
    """sorted set: the thread's run ids by when they ended."""
    return f"{PREFIX}:thread:{{{thread_id}}}:runs"


# Fairness and priority (tether.planner.admission) ----------------------------------------
# One hash tag for all: the admission script checks and counts every tenant at once.
#: hash: event id -> TaskEvent JSON of each event waiting for capacity or admitted and
#: whose run has not ended yet.
ADMISSION_EVENTS = f"{PREFIX}:admission:{{admission}}:events"
#: sorted set: waiting interactive events, all scores 0, members ``tenant NUL seq NUL
#: event id`` (seq zero-padded): each tenant's oldest first by lexical order.
ADMISSION_WAITING_INTERACTIVE = f"{PREFIX}:admission:{{admission}}:waiting:interactive"
#: sorted set: waiting batch events, as the interactive ones.
ADMISSION_WAITING_BATCH = f"{PREFIX}:admission:{{admission}}:waiting:batch"
#: sorted set: tenants with interactive events waiting -> the turn they were last served.
ADMISSION_TENANTS_INTERACTIVE = f"{PREFIX}:admission:{{admission}}:tenants:interactive"
#: sorted set: tenants with batch events waiting -> the turn they were last served.
ADMISSION_TENANTS_BATCH = f"{PREFIX}:admission:{{admission}}:tenants:batch"
#: hash: event id -> tenant of each admitted event whose run has not ended (runs in flight).
ADMISSION_RUNNING = f"{PREFIX}:admission:{{admission}}:running"
#: hash: tenant -> its runs in flight.
ADMISSION_COUNTS = f"{PREFIX}:admission:{{admission}}:counts"
#: sorted set: admitted event ids -> when they were admitted or last checked by the
#: reconciler.
ADMISSION_ADMITTED = f"{PREFIX}:admission:{{admission}}:admitted"
#: sorted set: event ids whose slot was given back -> when (a redelivered start takes none).
ADMISSION_DONE = f"{PREFIX}:admission:{{admission}}:done"
#: hash: counters ``seq`` (arrivals), ``turn`` and ``releases`` (runs admitted from waiting).
ADMISSION_COUNTERS = f"{PREFIX}:admission:{{admission}}:counters"
#: hash: event id -> when it was first published, for its queue wait once its run starts.
ADMISSION_SINCE = f"{PREFIX}:admission:{{admission}}:since"


# Long-term memory (tether.memory.longterm) ------------------------------------------------
#: set: agents with long-term memory.
MEMORY_AGENTS = f"{PREFIX}:memory:agents"


def memory(agent: str, subject: str) -> str:
    """hash: what ``agent`` remembers about ``subject``, key -> item JSON."""
    return f"{PREFIX}:memory:{agent}:{subject}"


def memory_runs(agent: str, subject: str) -> str:
    """sorted set: the runs of ``agent`` about ``subject`` by start: where copies of
    what it remembers may be, for forgetting."""
    return f"{PREFIX}:memory-runs:{agent}:{subject}"


# Shared rate limits (tether.store.ratelimits) --------------------------------------------
#: sorted set: "run_id step N" or "run_id action ID" -> when that message, held back by a
#: rate limit, is due to be published again (tether.planner.ratelimited publishes it).
DEFERRED = f"{PREFIX}:deferred"


def ratelimit(tag: str, part: str) -> str:
    """string: one part of a shared rate limit, in its endpoint's or tool's slot: ``pause``
    (until when a 429 holds the endpoint), ``grant:ID`` (the turn of one call waiting),
    ``queue:LIMIT`` (the next turn) or ``tat:LIMIT:requests|tokens`` (a GCRA's time)."""
    return f"{PREFIX}:ratelimit:{{{tag}}}:{part}"


# Escalation notifications (tether.escalation.webhooks) ----------------------------------


def notified(escalation_id: str, event: str, target: str) -> str:
    """string: set once a notification reached one webhook: (escalation, event, webhook)
    once."""
    return f"{PREFIX}:notified:{escalation_id}:{event}:{target}"


def notify_reminder(escalation_id: str, event: str) -> str:
    """string: set once ``event``, a reminder of a pending escalation, was queued (as
    notify_waiting)."""
    return f"{PREFIX}:notify:waiting:{{{NOTIFICATIONS}}}:{escalation_id}:{event}"


def notify_waiting(escalation_id: str) -> str:
    """string: set when an escalation's "still waiting" notification was queued, once; in
    the notification stream's slot, since one script writes both."""
    return f"{PREFIX}:notify:waiting:{{{NOTIFICATIONS}}}:{escalation_id}"


# What a commit's spill entry may write (tether.store.spill): the indexes and streams that
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
        or key.startswith((f"{PREFIX}:autonomy:", f"{PREFIX}:thread:{{", f"{PREFIX}:rollup:"))
        or key.startswith(f"{PREFIX}:runs:status:")
        or (key.startswith(f"{PREFIX}:run:{{") and key.endswith("}:log"))
    )
