"""Threads and long-term memory: see a thread's runs and turns, what agents remember about
a subject, and forget either.

Anyone signed in may read them, as they read runs, which hold the same conversations.
Forgetting deletes runs, their event logs and memories for good, so only an admin may,
as only an admin deletes dead letters; every form carries the session's CSRF token.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from tether.console import access
from tether.console.access import PREFIX
from tether.console.rendering import render
from tether.console.sessions import Session
from tether.errors import TetherError
from tether.escalation.operators import Role
from tether.memory import forget
from tether.query import threads as thread_query

router = APIRouter()

Viewer = Annotated[Session, Depends(access.viewer)]


def _forgotten(what: str, report: forget.Forgotten) -> str:
    runs = f", {len(report.runs)} run(s): {', '.join(report.runs)}" if report.runs else ""
    kept = (
        f"; kept {len(report.kept_runs)} run(s) still holding copies: {', '.join(report.kept_runs)}"
        if report.kept_runs
        else ""
    )
    return f"forgot {what}: {len(report.keys)} key(s){runs}{kept}"


@router.get("/threads")
def threads_page(request: Request, session: Viewer) -> HTMLResponse:
    rows = thread_query.list_threads(access.runtime(request))
    return render(
        request,
        "threads.html",
        session,
        rows=rows,
        can_forget=session.role.allows(Role.admin),
    )


@router.get("/threads/{thread_id}")
def thread_page(request: Request, thread_id: str, session: Viewer) -> HTMLResponse:
    view = thread_query.thread(access.runtime(request), thread_id)
    if view is None:
        raise HTTPException(404, f"no thread {thread_id!r}: never used, or forgotten")
    return render(
        request,
        "thread.html",
        session,
        view=view,
        can_forget=session.role.allows(Role.admin),
    )


@router.post("/threads/{thread_id}/forget")
async def forget_thread(request: Request, thread_id: str, session: Viewer) -> RedirectResponse:
    access.allowed(session, Role.admin)
    await access.checked_form(request, session)
    try:
        report = forget.forget_thread(access.runtime(request), thread_id)
    except TetherError as exc:
        said = urlencode({"error": f"thread {thread_id} was not forgotten: {exc}"})
        return RedirectResponse(f"{PREFIX}/threads/{quote(thread_id)}?{said}", status_code=303)
    said = urlencode(
        {"notice": f"{_forgotten(f'thread {thread_id}', report)} as {session.operator}"}
    )
    return RedirectResponse(f"{PREFIX}/threads?{said}", status_code=303)


@router.get("/memory")
def memory_page(request: Request, session: Viewer, subject: str = "") -> HTMLResponse:
    found = (
        thread_query.subject_memory(access.runtime(request), subject.strip())
        if subject.strip()
        else None
    )
    return render(
        request,
        "memory.html",
        session,
        subject=subject.strip(),
        found=found,
        can_forget=session.role.allows(Role.admin),
    )


@router.post("/memory/forget")
async def forget_memory(request: Request, session: Viewer) -> RedirectResponse:
    access.allowed(session, Role.admin)
    form = await access.checked_form(request, session)
    subject = form.get("subject")
    subject = subject.strip() if isinstance(subject, str) else ""
    if not subject:
        return RedirectResponse(
            f"{PREFIX}/memory?{urlencode({'error': 'name the subject to forget'})}", status_code=303
        )
    report = forget.forget_subject(access.runtime(request), subject, runs=form.get("runs") == "1")
    said = {
        "subject": subject,
        "notice": f"{_forgotten(f'subject {subject}', report)} as {session.operator}",
    }
    return RedirectResponse(f"{PREFIX}/memory?{urlencode(said)}", status_code=303)
