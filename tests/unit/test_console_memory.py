"""The console's memory page without workers: anyone signed in reads what agents remember
about a subject; only an admin forgets it, and only with the session's CSRF token."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tether.api import create_app
from tether.config import Settings
from tether.console import sessions
from tether.escalation import operators
from tether.escalation.operators import Role
from tether.memory.longterm import MemoryItem
from tether.runtime import Runtime
from tether.store import keys

SUBJECT = "cust-ana"
TOKENS: dict[Role, str] = {}


@pytest.fixture
def console(redis_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, Runtime]]:
    entries = []
    for role in (Role.viewer, Role.admin):
        token, key = operators.new_token()
        TOKENS[role] = token
        entries.append({"name": role.value, "key_sha256": key, "role": role.value})
    (tmp_path / "operators.json").write_text(json.dumps({"operators": entries}))
    rt = Runtime(Settings(redis_url=redis_url, operators_file=str(tmp_path / "operators.json")))
    item = MemoryItem(key="order", value="<b>1042</b>", run_id="run_1", action_id="act_1")
    rt.store.client.hset(keys.memory("memo", SUBJECT), "order", item.model_dump_json())
    rt.store.client.sadd(keys.MEMORY_AGENTS, "memo")
    with TestClient(create_app(rt), follow_redirects=False) as http:
        yield http, rt


def _signed_in(rt: Runtime, role: Role) -> tuple[dict[str, str], str]:
    cookie, session = sessions.create(rt.store.client, role.value, role, TOKENS[role])
    return {"Cookie": f"{sessions.COOKIE}={cookie}"}, session.csrf


def test_a_viewer_reads_a_subjects_memory_but_may_not_forget_it(
    console: tuple[TestClient, Runtime],
) -> None:
    http, rt = console
    headers, csrf = _signed_in(rt, Role.viewer)

    page = http.get(f"/console/memory?subject={SUBJECT}", headers=headers)
    assert page.status_code == 200
    assert "&lt;b&gt;1042&lt;/b&gt;" in page.text  # shown as text
    assert 'id="forget-memory"' not in page.text
    refused = http.post(
        "/console/memory/forget", data={"csrf": csrf, "subject": SUBJECT}, headers=headers
    )
    assert refused.status_code == 403
    assert rt.store.client.exists(keys.memory("memo", SUBJECT))


def test_an_admin_forgets_a_subject_with_the_forms_csrf_token_only(
    console: tuple[TestClient, Runtime],
) -> None:
    http, rt = console
    headers, csrf = _signed_in(rt, Role.admin)
    assert (
        'id="forget-memory"' in http.get(f"/console/memory?subject={SUBJECT}", headers=headers).text
    )

    forged = http.post("/console/memory/forget", data={"subject": SUBJECT}, headers=headers)
    assert forged.status_code == 403
    assert rt.store.client.exists(keys.memory("memo", SUBJECT))

    done = http.post(
        "/console/memory/forget", data={"csrf": csrf, "subject": SUBJECT}, headers=headers
    )
    assert done.status_code == 303
    assert "forgot+subject+cust-ana" in done.headers["location"]
    assert not rt.store.client.exists(keys.memory("memo", SUBJECT))
