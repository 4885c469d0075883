"""The console in a real headless Chromium against real workers.

Sign in, watch a run's timeline update live, decide escalations in the inbox (edit
arguments then approve, reject, bulk approve), and what is refused: a viewer's
decision, a form without its CSRF token, a request without a session. Whatever a tool
or a model wrote is shown as text.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import Console, sign_in
from tests.browser.console_agents import HOSTILE
from tests.integration.helpers import pending_escalation, wait_for, wait_status
from tether import client
from tether.escalation import records
from tether.query import deadletters
from tether.transport.wire import Verdict


def test_sign_in_refuses_a_wrong_token_and_lets_an_operator_in(
    page: Page, console: Console
) -> None:
    page.goto(console.page_url("/inbox?agent=refunder"))
    expect(page).to_have_url(
        re.compile(r"/console/sign-in\?next=%2Fconsole%2Finbox%3Fagent%3Drefunder$")
    )
    page.fill("input[name=token]", "not-a-token")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#error")).to_contain_text("belongs to no operator")
    page.fill("input[name=token]", console.tokens["alice"])
    page.click("#sign-in button[type=submit]")
    # Back on the page asked for, its filter kept.
    expect(page).to_have_url(re.compile(r"/console/inbox\?agent=refunder$"))
    expect(page.locator("#operator")).to_have_text("alice")
    cookie = next(c for c in page.context.cookies() if c["name"] == "tether_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # Signing out ends the session itself, not only the cookie.
    with httpx.Client(base_url=console.url, cookies={"tether_console": cookie["value"]}) as old:
        assert old.get("/console/inbox", follow_redirects=False).status_code == 200
        page.click("form.who button[type=submit]")
        expect(page).to_have_url(re.compile(r"/console/sign-in$"))
        assert old.get("/console/inbox", follow_redirects=False).status_code == 303


def test_tool_output_and_model_text_are_shown_as_text(
    page: Page, console: Console, artifacts: Path
) -> None:
    rt = console.runtime
    run_id = client.submit("note_reader", "read the customer's note", runtime=rt)
    wait_status(rt, run_id, "succeeded", 60)
    sign_in(page, console, "victor", f"/runs/{run_id}")
    shown = page.reload()
    assert shown is not None
    assert "default-src 'self'" in shown.headers["content-security-policy"]
    tool_call = page.locator("li.entry.tool_call").first
    tool_call.locator("summary").click()
    expect(tool_call.locator("pre.output")).to_contain_text(HOSTILE)
    expect(page.locator("#result")).to_contain_text(HOSTILE)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main b").count() == 0  # the tool's <b> is text, not an element
    page.screenshot(path=str(artifacts / "console-run.png"), full_page=True)


def test_edit_arguments_then_approve_and_watch_the_run_finish_live(
    page: Page, console: Console, artifacts: Path
) -> None:
    rt = console.runtime
    # Submitted as an upstream system would, through the HTTP API.
    published = httpx.post(
        f"{console.url}/v1/events",
        json={"event_id": "refund-acme-900", "agent": "refunder", "input": "refund 900 to acme"},
        headers={"Authorization": f"Bearer {console.tokens['alice']}"},
    )
    assert published.status_code == 202, published.text
    run_id = published.json()["run_id"]
    escalation_id = pending_escalation(rt, run_id, 60).escalation.escalation_id
    sign_in(page, console, "alice", f"/runs/{run_id}")
    expect(page.locator("#status")).to_have_text("waiting_human")

    inbox = page.context.new_page()
    inbox.goto(console.page_url("/inbox?agent=refunder"))
    item = inbox.locator(f"#esc-{escalation_id}")
    expect(item.locator(".request")).to_contain_text("refund 900 to acme")
    expect(item.locator("textarea.arguments")).to_contain_text('"cents": 900')
    inbox.screenshot(path=str(artifacts / "console-inbox.png"), full_page=True)
    item.locator("textarea.arguments").fill('{"account": "acme", "cents": 500}')
    item.locator("button.verdict-approve").click()
    expect(inbox.locator("#notice")).to_contain_text(f"approve {escalation_id} with edited")

    # The run page, never reloaded, follows the run to its end.
    expect(page.locator("#status")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#result")).to_have_text("Done: refunded 500 cents to acme")
    page.screenshot(path=str(artifacts / "console-run-succeeded.png"), full_page=True)
    decided = [e for _, e in rt.store.log.read(run_id) if e.kind == "escalation_decided"]
    assert decided[0].data["operator"] == "alice"
    assert decided[0].data["arguments"] == {"account": "acme", "cents": 500}


def test_reject_ends_the_run_rejected(page: Page, console: Console) -> None:
    rt = console.runtime
    run_id = client.submit("refunder", "refund 70 to globex", runtime=rt)
    escalation_id = pending_escalation(rt, run_id, 60).escalation.escalation_id
    sign_in(page, console, "alice", "/inbox?agent=refunder")
    item = page.locator(f"#esc-{escalation_id}")
    item.locator("input.reason-input").fill("globex has no refund due")
    item.locator("button.verdict-reject").click()
    expect(page.locator("#notice")).to_contain_text(f"reject {escalation_id}")
    state = wait_status(rt, run_id, "rejected", 60)
    assert state.error is not None and "globex has no refund due" in state.error.message
    assert "alice rejected" in state.error.message


def test_bulk_approve_what_arrives_live(page: Page, console: Console) -> None:
    rt = console.runtime
    sign_in(page, console, "alice", "/inbox?agent=bulk_refunder")
    expect(page.locator("article.escalation")).to_have_count(0)
    run_ids = [
        client.submit("bulk_refunder", f"refund {cents} to initech", runtime=rt)
        for cents in (11, 12, 13)
    ]
    # They arrive on the open page, without a reload.
    expect(page.locator("article.escalation")).to_have_count(3, timeout=60_000)
    page.click("#approve-all button")
    expect(page.locator("#notice")).to_contain_text("approved 3 as alice")
    for run_id, cents in zip(run_ids, (11, 12, 13), strict=True):
        state = wait_status(rt, run_id, "succeeded", 60)
        assert state.result == f"Done: refunded {cents} cents to initech"


def test_a_viewer_sees_the_inbox_but_cannot_decide(page: Page, console: Console) -> None:
    rt = console.runtime
    run_id = client.submit("refunder", "refund 5 to umbrella", runtime=rt)
    escalation_id = pending_escalation(rt, run_id, 60).escalation.escalation_id
    sign_in(page, console, "victor", "/inbox?agent=refunder")
    expect(page.locator(f"#esc-{escalation_id}")).to_be_visible()
    expect(page.locator("#viewer-note")).to_be_visible()
    assert page.locator("form.decide").count() == 0
    assert page.locator("#approve-all").count() == 0
    csrf = page.locator("form.who input[name=csrf]").input_value()
    refused = page.request.post(
        console.page_url(f"/escalations/{escalation_id}/decide"),
        form={"csrf": csrf, "verdict": "approve"},
        max_redirects=0,
    )
    assert refused.status == 403
    assert "viewer" in refused.text()
    assert records.load(rt, escalation_id)[0].status == "pending"
    client.decide(
        escalation_id, Verdict.reject, by="alice", token=console.tokens["alice"], runtime=rt
    )


def test_a_form_without_its_csrf_token_or_session_is_refused(page: Page, console: Console) -> None:
    rt = console.runtime
    run_id = client.submit("refunder", "refund 6 to hooli", runtime=rt)
    escalation_id = pending_escalation(rt, run_id, 60).escalation.escalation_id
    sign_in(page, console, "alice", "/inbox?agent=refunder")
    decide_url = console.page_url(f"/escalations/{escalation_id}/decide")
    without_token = page.request.post(decide_url, form={"verdict": "approve"}, max_redirects=0)
    assert without_token.status == 403
    assert "CSRF" in without_token.text()
    wrong_token = page.request.post(
        decide_url, form={"verdict": "approve", "csrf": "x" * 43}, max_redirects=0
    )
    assert wrong_token.status == 403

    with httpx.Client(base_url=console.url) as anonymous:
        assert anonymous.post(f"/console/escalations/{escalation_id}/decide").status_code == 401
        bulk = anonymous.post("/console/inbox/approve-all", data={"csrf": "x"})
        assert bulk.status_code == 401
        page_without_session = anonymous.get("/console/inbox")
        assert page_without_session.status_code == 303
        assert page_without_session.headers["location"].startswith("/console/sign-in")
        assert escalation_id not in page_without_session.text
        assert anonymous.get(f"/console/runs/{run_id}/live").status_code == 303
    assert records.load(rt, escalation_id)[0].status == "pending"
    client.decide(
        escalation_id, Verdict.reject, by="alice", token=console.tokens["alice"], runtime=rt
    )


def test_dead_letters_stats_and_queues(browser: Browser, page: Page, console: Console) -> None:
    rt = console.runtime
    run_id = client.submit("refunder", "refund 8 to soylent", runtime=rt)
    escalation_id = pending_escalation(rt, run_id, 60).escalation.escalation_id
    # A decision no operator signed: the escalation service refuses it into a dead letter.
    client.decide(escalation_id, Verdict.approve, by="mallory", runtime=rt)
    wait_for(
        lambda: any(d.run_id == run_id for d in deadletters.list_dead(rt).letters),
        30,
        "a dead letter",
    )
    letter = next(d for d in deadletters.list_dead(rt).letters if d.run_id == run_id)

    sign_in(page, console, "victor", "/dead")
    row = page.locator(f"tr[data-letter='{letter.id}']")
    expect(row).to_contain_text("no operator credential")
    assert row.locator("button").count() == 0
    csrf = page.locator("form.who input[name=csrf]").input_value()
    refused = page.request.post(
        console.page_url(f"/dead/{letter.id}/delete"), form={"csrf": csrf}, max_redirects=0
    )
    assert refused.status == 403

    admin = browser.new_context().new_page()
    sign_in(admin, console, "ada", "/dead")
    admin.locator(f"tr[data-letter='{letter.id}'] button.delete").click()
    expect(admin.locator("#notice")).to_contain_text(f"deleted {letter.id}")
    expect(admin.locator(f"tr[data-letter='{letter.id}']")).to_have_count(0)
    assert all(d.id != letter.id for d in deadletters.list_dead(rt).letters)

    admin.goto(console.page_url("/stats?since=1h"))
    expect(admin.locator("tr[data-agent='refunder']")).to_be_visible()
    expect(admin.locator("tr[data-agent='all agents'] td").nth(1)).not_to_have_text(
        re.compile("^0 ")
    )
    admin.goto(console.page_url("/queues"))
    expect(admin.locator("table.queues")).to_contain_text("tether.plan")
    expect(admin.locator("table.consumers td.ok").first).to_have_text("alive")
    admin.context.close()
    client.decide(
        escalation_id, Verdict.reject, by="alice", token=console.tokens["alice"], runtime=rt
    )


def test_answer_a_question_and_extend_a_budget(
    page: Page, console: Console, artifacts: Path
) -> None:
    rt = console.runtime
    asked = client.submit("asker", "refund my last order", runtime=rt)
    budgeted = client.submit("budgeted", "add 3 times", runtime=rt)
    held = client.submit("refunder", "refund 1200 to acme", runtime=rt)
    question = pending_escalation(rt, asked, 60).escalation.escalation_id
    budget = pending_escalation(rt, budgeted, 60).escalation.escalation_id
    approval = pending_escalation(rt, held, 60).escalation.escalation_id
    sign_in(page, console, "alice", "/inbox")
    for escalation_id in (question, budget, approval):
        expect(page.locator(f"#esc-{escalation_id}")).to_be_visible()
    page.locator(f"#esc-{approval} details.conversation summary").click()
    page.screenshot(path=str(artifacts / "console-inbox-kinds.png"), full_page=True)

    page.locator(f"#esc-{question} input.answer").fill("ACME-7")
    page.locator(f"#esc-{question} button.verdict-answer").click()
    expect(page.locator("#notice")).to_contain_text(f"answer {question} as alice")
    page.locator(f"#esc-{budget} input.extend-by").fill("3")
    page.locator(f"#esc-{budget} button.verdict-extend").click()
    expect(page.locator("#notice")).to_contain_text(f"extend {budget} as alice")

    assert wait_status(rt, asked, "succeeded", 60).result == "Refunding account ACME-7"
    assert wait_status(rt, budgeted, "succeeded", 60).result == "added 3 times"
    client.decide(approval, Verdict.reject, by="alice", token=console.tokens["alice"], runtime=rt)


def test_runs_list_filters_and_follows_status(page: Page, console: Console) -> None:
    rt = console.runtime
    run_id = client.submit("refunder", "refund 3 to wayne", runtime=rt)
    escalation_id = pending_escalation(rt, run_id, 60).escalation.escalation_id
    sign_in(page, console, "victor", "/?agent=refunder&status=waiting_human")
    row = page.locator(f"tr[data-run='{run_id}']")
    expect(row).to_contain_text("waiting_human")
    expect(page.locator("#runs")).not_to_contain_text("succeeded")
    page.goto(console.page_url("/?agent=note_reader"))
    expect(page.locator(f"tr[data-run='{run_id}']")).to_have_count(0)

    page.goto(console.page_url("/?agent=refunder"))
    expect(row).to_contain_text("waiting_human")
    client.decide(
        escalation_id, Verdict.approve, by="alice", token=console.tokens["alice"], runtime=rt
    )
    # The open list follows the run's status without a reload.
    expect(row).to_contain_text("succeeded", timeout=60_000)
    row.locator("a").click()
    expect(page.locator("#result")).to_have_text("Done: refunded 3 cents to wayne")


def test_a_decision_taken_meanwhile_is_not_taken_twice(page: Page, console: Console) -> None:
    rt = console.runtime
    run_id = client.submit("refunder", "refund 4 to stark", runtime=rt)
    escalation_id = pending_escalation(rt, run_id, 60).escalation.escalation_id
    sign_in(page, console, "alice", "/inbox?agent=refunder")
    item = page.locator(f"#esc-{escalation_id}")
    expect(item).to_be_visible()
    # alice is editing its arguments when someone else rejects it: the live inbox leaves
    # the item she is in where it is.
    item.locator("textarea.arguments").focus()
    client.decide(
        escalation_id, Verdict.reject, by="alice", token=console.tokens["alice"], runtime=rt
    )
    wait_for(lambda: records.load(rt, escalation_id)[0].status == "decided", 30, "the decision")
    page.wait_for_timeout(3_000)  # two refreshes of the live inbox
    item.locator("button.verdict-approve").click()
    expect(page.locator("#error")).to_contain_text(f"{escalation_id} was not decided")
    expect(page.locator("#error")).to_contain_text("reject by alice")
    assert wait_status(rt, run_id, "rejected", 60).error is not None
