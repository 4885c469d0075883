"""The planner service's logic: one message is one planning step of one run.

intake.py accepts events (fork.py gives a fork its starting state, admission.py
makes it wait while its tenant or all runs are at their cap); step.py runs a planning step: model_call.py reserves
its budget and calls the model, decide.py commits what the answer means
(tool_calls.py for a turn of tool calls, refusal.py for a turn given back to the
model, asking.py for a step that waits on a human), fencing.py is what a step
does once its commit won or lost; inbox.py takes tool observations (recording.py
is what one changes in the run) and decisions.py human decisions, guarding.py runs the guardrails of the input, tool
calls and answer, lifecycle.py ends runs, outbox.py publishes what
a committed state asks for, reconcile.py re-drives runs whose next message was
lost. State is committed over the version it was read at, so only one delivery
of a step can commit; publishing follows the commit and is repeated on
redelivery (the state is the outbox), and every consumer is idempotent.

The modules call downward: each imports only modules below it in this order
(tests/unit/test_planner_layout.py checks it, function-level imports included):

    worker
    intake
    decisions
    inbox
    recording
    reconcile
    step
    decide
    tool_calls
    refusal
    model_call
    ratelimited
    guarding
    asking
    lifecycle
    fencing
    outbox
    fork
    admission
"""

from tether.planner.decisions import resume
from tether.planner.inbox import observe
from tether.planner.intake import start
from tether.planner.lifecycle import finish
from tether.planner.outbox import redispatch
from tether.planner.reconcile import Reconciler, sweep
from tether.planner.step import plan

__all__ = ["Reconciler", "finish", "observe", "plan", "redispatch", "resume", "start", "sweep"]
