"""What comes back to the planner from the executor: tool observations.

An observation is not taken on its word (invariant 7): it counts only as what
the executor stored for a pending action before sending it (its result, or for
a question to a human, the kind it asked). Anything else is refused
(tether.worker.deadletters.refuse). Most often the message is the stored result
byte for byte, so no read goes first: its commit goes ahead only while the stored
result holds exactly those bytes (RunStore.update's ``holding``), and anything
else falls back to reading what was stored. Human decisions come back through
tether.planner.decisions.
"""

from __future__ import annotations

from tether.agent.definition import get_agent
from tether.guardrails import tally
from tether.planner import guarding
from tether.planner.lifecycle import finish
from tether.planner.outbox import redispatch
from tether.planner.recording import Recording, mismatch
from tether.planner.step import plan
from tether.rollout import autonomy
from tether.runtime import Runtime
from tether.store import keys
from tether.store.state import RunState, RunStatus
from tether.store.versioned import HeldValueDiffersError
from tether.transport import celery_app
from tether.transport.wire import (
    EventKind,
    GuardrailFinding,
    GuardrailOutcome,
    Observation,
)
from tether.worker import deadletters


def _refuse_observation(rt: Runtime, observation: Observation, reason: str, detail: str) -> None:
    deadletters.refuse(
        rt,
        celery_app.OBSERVE,
        {"observation": observation.model_dump(mode="json")},
        reason,
        f"{detail} (observation of action {observation.action_id}, tool "
        f"{observation.tool!r}, run {observation.run_id})",
        run_id=observation.run_id,
        step=observation.step,
    )


def _refuse_unstored(rt: Runtime, observation: Observation) -> None:
    _refuse_observation(
        rt, observation, "not_from_executor", "the executor stored no result for this action"
    )


def _vouched(rt: Runtime, observation: Observation, asked: list[str]) -> Observation | None:
    """The observation as the executor stored it before sending; None: refused as forged.

    ``asked`` gets what the executor recorded of a question for a human
    (keys.action_held_value), for the pending action to be checked against.

    A result is stored under the action's id before its observation goes out
    (first writer wins), so the stored one is the action's outcome whatever the
    message says: one that differs is most often a loser of that race (a worker
    whose lease lapsed sends its own outcome), so the stored one goes on in its
    place. A question for a human leaves the kind it asks (keys.action_held).
    """
    # One round trip; two GETs rather than one MGET, which the planner's ACL user lacks.
    raw, held = rt.store.batch.run(
        lambda pipe: (
            pipe.get(keys.action_result(observation.action_id)),
            pipe.get(keys.action_held(observation.action_id)),
        )
    )
    if observation.needs_human is not None:
        if held is None or held.split("|")[0] != str(observation.needs_human):
            _refuse_observation(
                rt,
                observation,
                "not_from_executor",
                f"the executor asked no human ({observation.needs_human}) about this action",
            )
            return None
        asked[:] = [held]
        return observation
    if raw is None:
        _refuse_unstored(rt, observation)
        return None
    return Observation.model_validate_json(raw)


def observe(rt: Runtime, observation: Observation) -> None:
    """Record a tool's outcome; the last outstanding one triggers the next step."""
    if _vouched_by_commit(observation):
        _observe_claimed(rt, observation)
        return
    asked: list[str] = []
    vouched = _vouched(rt, observation, asked)
    if vouched is not None:
        _observe_vouched(rt, vouched, asked)


def _observe_claimed(rt: Runtime, observation: Observation) -> None:
    """Record an observation not vouched for yet, its commit checking it against the
    stored result; one the check refuses, or the run declines, goes on as _vouched has it."""
    claimed = observation.model_dump_json()
    try:
        recording, committed = _commit(rt, observation, [], holding=claimed)
    except HeldValueDiffersError as differs:
        if differs.found is None:
            _refuse_unstored(rt, observation)
            return
        # As in _vouched: most often the loser of the first-writer-wins store.
        _observe_vouched(rt, Observation.model_validate_json(differs.found), [])
        return
    if committed is not None:
        _went_on(rt, recording, committed)
        return
    # Declined before any commit checked the claim: nothing is said of it until vouched for.
    vouched = _vouched(rt, observation, [])
    if vouched is None:
        return
    if vouched.model_dump_json() == claimed:
        _not_recorded(rt, vouched, recording.mismatch)
        return
    _observe_vouched(rt, vouched, [])


def _vouched_by_commit(observation: Observation) -> bool:
    """Whether the observation's commit itself can check it against the stored result."""
    # A question for a human is checked against keys.action_held instead (rare); a
    # blocked result ends the run outside that commit; a script reaches one cluster slot.
    if observation.needs_human is not None:
        return False
    stop = guarding.result_stop(observation)
    if stop is not None and stop.outcome == GuardrailOutcome.block:
        return False
    return keys.slot_tag(keys.action_result(observation.action_id)) == keys.slot_tag(
        keys.run(observation.run_id)
    )


def _observe_vouched(rt: Runtime, vouched: Observation, asked: list[str]) -> None:
    """Record an observation already vouched for (what the executor stored)."""
    stop = guarding.result_stop(vouched)
    if stop is not None and stop.outcome == GuardrailOutcome.block:
        _blocked(rt, vouched, stop)
        return
    recording, committed = _commit(rt, vouched, asked)
    if committed is None:
        _not_recorded(rt, vouched, recording.mismatch)
    else:
        _went_on(rt, recording, committed)


def _commit(
    rt: Runtime, observation: Observation, asked: list[str], *, holding: str | None = None
) -> tuple[Recording, RunState | None]:
    """Commit the observation; ``holding``: only while its stored result is exactly that
    (HeldValueDiffersError otherwise, and nothing written)."""
    recording = Recording(rt, observation, asked)
    committed = rt.store.update(
        observation.run_id,
        recording.record,
        log=recording.describe,
        # A failed call of a requires_approval tool tightens its earned autonomy, once.
        side_writes=lambda state: autonomy.failure_writes(get_agent(state.agent), observation),
        reserve_after=recording.reserve_after,
        holding=(
            [(keys.action_result(observation.action_id), holding)] if holding is not None else ()
        ),
    )
    return recording, committed


def _went_on(rt: Runtime, recording: Recording, committed: RunState) -> None:
    """What follows a committed observation: the next step, or what the run waits for."""
    tally.count(rt.store.batch, committed, recording.observation.guardrails)
    if committed.status == RunStatus.running:
        plan(rt, committed.run_id, committed.step, recording.reserved)
    else:
        redispatch(rt, committed, before=recording.read)


def _blocked(rt: Runtime, observation: Observation, stop: GuardrailFinding) -> None:
    """End the run whose pending action's result a guardrail blocked (the stored result
    says so: the executor's, trusted as any result is)."""
    state = rt.store.load(observation.run_id)
    action = next((a for a in state.pending_actions if a.action_id == observation.action_id), None)
    differs = mismatch(observation, action, []) if action is not None else None
    if state.terminal or action is None or differs is not None:
        _not_recorded(rt, observation, differs)
        return
    ended = finish(
        rt,
        state.run_id,
        state.step,
        RunStatus.rejected,
        guarding.blocked_error(stop),
        decision="guardrail_blocked",
        also_log=lambda ended: Recording(rt, observation, []).describe(ended),
    )
    if ended is not None:
        tally.count(rt.store.batch, ended, observation.guardrails)


def _not_recorded(rt: Runtime, observation: Observation, mismatch: str | None) -> None:
    if mismatch is not None:
        _refuse_observation(rt, observation, "differs_from_pending", mismatch)
        return
    state = rt.store.load(observation.run_id)
    rt.store.log.append(
        state.run_id,
        EventKind.observation_ignored,
        observation.step,
        action_id=observation.action_id,
        reason=f"run is {state.status}" if state.terminal else "already recorded",
    )
    # An earlier delivery may have committed and died before publishing what
    # followed (the next step, an escalation): publishing again is harmless.
    redispatch(rt, state)
