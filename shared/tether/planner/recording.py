"""One observation's commit: what it changes in the run, and how it may differ from
the action it names (tether.planner.inbox sends it; decisions reuse its status rule)."""

from __future__ import annotations

import json
from typing import Any

from tether.planner import guarding
from tether.planner.fencing import escalation_id
from tether.planner.model_call import model_reservation
from tether.runtime import Runtime
from tether.store import keys
from tether.store.budgets import GuardedReservation
from tether.store.state import ChatMessage, HumanWait, RunState, RunStatus
from tether.transport.wire import EventKind, Observation, RunEvent, ToolAction


def waiting_status(state: RunState, **update: Any) -> RunStatus:
    """The status of ``state`` once ``update`` is applied: what it waits for, if anything."""
    waits = update.get("awaiting_human", state.awaiting_human)
    pending = update.get("pending_actions", state.pending_actions)
    if waits:
        return RunStatus.waiting_human
    return RunStatus.waiting_tools if pending else RunStatus.running


class Recording:
    """One observation's commit, and what its last attempt found (the store calls
    ``record`` again on every retry of its compare-and-set)."""

    def __init__(self, rt: Runtime, observation: Observation, asked: list[str]) -> None:
        self.rt = rt
        self.observation = observation
        self.asked = asked
        self.read: RunState | None = None
        self.mismatch: str | None = None
        self.reserved: GuardedReservation | None = None

    def record(self, state: RunState) -> RunState | None:
        observation = self.observation
        self.mismatch = None
        if state.terminal or observation.action_id not in {
            a.action_id for a in state.pending_actions
        }:
            return None
        action = next(a for a in state.pending_actions if a.action_id == observation.action_id)
        self.mismatch = mismatch(observation, action, self.asked)
        if self.mismatch is not None:
            return None
        self.read = state
        update = observed(state, action, observation)
        return state.model_copy(update={**update, "status": waiting_status(state, **update)})

    def describe(self, state: RunState) -> list[RunEvent]:
        observation = self.observation
        return [
            RunEvent(
                run_id=state.run_id,
                kind=EventKind.observation,
                step=observation.step,
                data={
                    "action_id": observation.action_id,
                    "tool": observation.tool,
                    "ok": observation.ok,
                    "error_category": observation.error_category,
                    "needs_human": observation.needs_human,
                    "remaining": len(state.pending_actions),
                },
            )
        ]

    def reserve_after(self, state: RunState) -> GuardedReservation | None:
        # The last observation readies the next step: its model call is reserved in
        # this commit's round trip rather than one of its own.
        ahead = model_reservation(self.rt, state) if state.status == RunStatus.running else None
        self.reserved = ahead
        return ahead


def mismatch(observation: Observation, action: ToolAction, asked: list[str]) -> str | None:
    """How the observation differs from the pending action it names; None: it does not."""
    sent = (observation.tool, observation.tool_call_id, observation.step)
    if sent != (action.tool, action.tool_call_id, action.step):
        return (
            f"it names tool {observation.tool!r}, call {observation.tool_call_id!r}, step "
            f"{observation.step}; the pending action is {action.tool!r}, call "
            f"{action.tool_call_id!r}, step {action.step}"
        )
    if observation.needs_human is not None and asked != [
        keys.action_held_value(observation.needs_human, action.rerun_approval)
    ]:
        return (
            f"the executor asked a human about another attempt ({asked[0]}) than the "
            f"pending one (re-run approval {action.rerun_approval})"
        )
    return None


def observed(state: RunState, action: ToolAction, observation: Observation) -> dict[str, Any]:
    """What the observation of ``action``, pending in ``state``, changes in it."""
    update: dict[str, Any] = {
        "pending_actions": [a for a in state.pending_actions if a is not action]
    }
    if observation.needs_human is not None:
        update["awaiting_human"] = [
            *state.awaiting_human,
            HumanWait(
                # One id per occurrence: the same action may need a human again later.
                escalation_id=escalation_id(
                    action.action_id, observation.needs_human, state.version
                ),
                kind=observation.needs_human,
                reason=observation.error or "the executor would not decide alone",
                action=action,
            ),
        ]
        return update
    stop = guarding.result_stop(observation)
    if stop is not None:
        # A result a guardrail escalated (a blocked one ended the run before this): the
        # model reads it only once a person approves.
        update["awaiting_human"] = guarding.held_result(state, action, observation, stop)
        return update
    content = {"result": observation.output} if observation.ok else {"error": observation.error}
    update["completed_actions"] = [*state.completed_actions, observation]
    update["messages"] = [
        *state.messages,
        ChatMessage(
            role="tool", tool_call_id=observation.tool_call_id, content=json.dumps(content)
        ),
    ]
    return update
