"""The run page's fork and retry buttons in a real headless Chromium against real workers:
an approver forks a run from its last step and lands on the new run, each run's page
links the other, and a viewer is offered neither button. The thread page: its runs and
turns for anyone signed in, the forget button for an admin."""

from __future__ import annotations

import re
import uuid

from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, sign_in
from tests.integration.helpers import wait_status
from tether import client
from tether.transport.wire import EventKind


def test_fork_from_the_last_step_links_both_runs(page: Page, console: Console) -> None:
    rt = console.runtime
    original = client.submit("note_reader", "read the customer's note", runtime=rt)
    wait_status(rt, original, "succeeded", 60)
    sign_in(page, console, "victor", f"/runs/{original}")
    expect(page.locator("#status")).to_have_text("succeeded")
    # A viewer reads the run but is offered no button that starts one.
    expect(page.locator("#fork")).to_have_count(0)
    expect(page.locator("#retry")).to_have_count(0)

    page.context.clear_cookies()
    sign_in(page, console, "alice", f"/runs/{original}")
    # Step 1 answered from the note the tool read at step 0: fork there.
    page.select_option("#fork select[name=from_step]", "1")
    page.click("#fork button")

    expect(page.locator("#notice")).to_contain_text(f"fork of {original} from step 1")
    expect(page).to_have_url(re.compile(r"/console/runs/run_[0-9a-f]+\?"))
    fork_run = page.url.split("/runs/")[1].split("?")[0]
    assert fork_run != original
    expect(page.locator("#forked-from")).to_contain_text(f"{original} at step 1")
    expect(page.locator("#status")).to_have_text("succeeded", timeout=60_000)
    # The tool's result came along from the original: the fork called no tool.
    assert EventKind.tool_call not in [e.kind for _, e in rt.store.log.read(fork_run)]

    page.click(f"#forked-from a[href$='/runs/{original}']")
    expect(page.locator("#forks")).to_contain_text(fork_run)


def test_a_thread_page_lists_its_runs_and_turns_and_an_admin_forgets_it(
    page: Page, console: Console
) -> None:
    rt = console.runtime
    thread = f"t-{uuid.uuid4().hex[:8]}"
    run_id = client.submit("note_reader", "read note n1", thread_id=thread, runtime=rt)
    wait_status(rt, run_id, "succeeded", 60)
    sign_in(page, console, "victor", "/threads")
    page.click(f"tr[data-thread='{thread}'] a")
    expect(page.locator(".thread-runs")).to_contain_text(run_id)
    expect(page.locator(f".turn[data-run='{run_id}']")).to_contain_text("read note n1")
    # The answer repeats what the tool read: shown as text, not run.
    expect(page.locator(".turn .assistant")).to_contain_text("<script>window.__pwned")
    assert page.evaluate("window.__pwned") is None
    expect(page.locator("#forget-thread")).to_have_count(0)

    page.context.clear_cookies()
    sign_in(page, console, "ada", f"/threads/{thread}")
    page.click("#forget-thread button")

    expect(page).to_have_url(re.compile(r"/console/threads\?"))
    expect(page.locator("#notice")).to_contain_text(f"forgot thread {thread}")
    expect(page.locator("#notice")).to_contain_text(run_id)
    expect(page.locator(f"tr[data-thread='{thread}']")).to_have_count(0)
    assert rt.store.get(run_id) is None
    gone = page.goto(console.page_url(f"/threads/{thread}"))
    assert gone is not None and gone.status == 404
