"""The planner service's logic: one message is one planning step of one run.

intake.py accepts events, step.py plans, inbox.py takes observations and human
decisions, outbox.py publishes what a committed state asks for, lifecycle.py
ends runs, reconcile.py re-drives runs whose next message was lost. State is
committed over the version it was read at, so only one delivery of a step can
commit; publishing follows the commit and is repeated on redelivery (the state
is the outbox), and every consumer is idempotent.
"""

from tether.planner.inbox import observe, resume
from tether.planner.intake import start
from tether.planner.lifecycle import finish
from tether.planner.outbox import redispatch
from tether.planner.reconcile import Reconciler, sweep
from tether.planner.step import plan

__all__ = ["Reconciler", "finish", "observe", "plan", "redispatch", "resume", "start", "sweep"]
