"""The inbox's forms: decide one escalation, or approve every pending one a filter picks.

Each decision goes through tether.client.decide, signed with the operator token the
operator signed in with (tether.escalation.operators.sign), so the escalation service
records it under that operator's name exactly as it records one from the CLI. Only an
approver or an admin may decide; every form carries the session's CSRF token.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData

from tether import client
from tether.console import access, reads
from tether.console.access import PREFIX
from tether.console.sessions import Session
from tether.errors import TetherError
from tether.escalation import records
from tether.escalation.operators import Role
from tether.transport.wire import Verdict

router = APIRouter()

Viewer = Annotated[Session, Depends(access.viewer)]


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() or None if isinstance(value, str) else None


def _back(form: FormData, **said: str) -> RedirectResponse:
    """To the inbox the form was posted from (its filters kept), saying what happened."""
    kept = {k: v for k in ("agent", "tool") if (v := _field(form, k))}
    return RedirectResponse(f"{PREFIX}/inbox?{urlencode({**kept, **said})}", status_code=303)


def _edited_arguments(form: FormData, original: dict[str, Any] | None) -> dict[str, Any] | None:
    """The arguments the operator edited; None when they left them as they were."""
    text = _field(form, "arguments")
    if text is None or original is None:
        return None
    try:
        edited = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"the edited arguments are not JSON: {exc}") from exc
    if not isinstance(edited, dict):
        raise ValueError("the edited arguments must be a JSON object, as the tool takes them")
    return None if edited == original else edited


@router.post("/escalations/{escalation_id}/decide")
async def decide(request: Request, escalation_id: str, session: Viewer) -> RedirectResponse:
    access.allowed(session, Role.approver)
    form = await access.checked_form(request, session)
    rt = access.runtime(request)
    try:
        verdict = Verdict(_field(form, "verdict") or "")
        record, _ = records.load(rt, escalation_id)
        action = record.escalation.action
        edited = (
            _edited_arguments(form, action.arguments if action else None)
            if verdict == Verdict.approve
            else None
        )
        extend_by = _field(form, "extend_by")
        client.decide(
            escalation_id,
            verdict,
            by=session.operator,
            reason=_field(form, "reason"),
            answer=_field(form, "answer"),
            extend_by=float(extend_by) if extend_by else None,
            arguments=edited,
            token=session.token,
            runtime=rt,
        )
    except (TetherError, ValueError) as exc:
        return _back(form, error=f"{escalation_id} was not decided: {exc}")
    edits = " with edited arguments" if edited else ""
    return _back(form, notice=f"{verdict} {escalation_id}{edits} as {session.operator}")


@router.post("/inbox/approve-all")
async def approve_all(request: Request, session: Viewer) -> RedirectResponse:
    """Approve every pending escalation the filter picks that takes an approval."""
    access.allowed(session, Role.approver)
    form = await access.checked_form(request, session)
    rt = access.runtime(request)
    wanted = reads.InboxFilter(agent=_field(form, "agent"), tool=_field(form, "tool"))
    approved: list[str] = []
    failed: list[str] = []
    for view in reads.inbox(rt, wanted):
        if Verdict.approve not in view.record.escalation.verdicts():
            continue
        try:
            client.decide(
                view.escalation_id,
                Verdict.approve,
                by=session.operator,
                reason="approved in bulk from the console",
                token=session.token,
                runtime=rt,
            )
            approved.append(view.escalation_id)
        except TetherError as exc:
            failed.append(f"{view.escalation_id}: {exc}")
    said = {"notice": f"approved {len(approved)} as {session.operator}: {', '.join(approved)}"}
    if failed:
        said["error"] = f"{len(failed)} not approved: {'; '.join(failed)}"
    return _back(form, **said)
