"""A real stack (its own Redis, real planner, executor and escalation workers) with the
console served by uvicorn on a free port, and Debian's chromium driven by Playwright.

Operators sign in with tokens from an operators file the escalation service reads
too: alice approves, victor only views, ada administers.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from tests.stacks import started_stack
from tether.api.app import create_app
from tether.config import Settings
from tether.dev.stack import DevStack
from tether.escalation import operators
from tether.runtime import Runtime

CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
AGENT_MODULES = ["tests.browser.console_agents", "tests.escalation_agents"]
ARTIFACTS = Path(os.environ.get("TETHER_ARTIFACTS", Path(__file__).parent / "artifacts"))


@dataclass(frozen=True)
class Console:
    url: str
    runtime: Runtime
    tokens: dict[str, str]

    def page_url(self, path: str) -> str:
        return f"{self.url}/console{path}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _operators_file(root: Path) -> tuple[Path, dict[str, str]]:
    tokens: dict[str, str] = {}
    entries = []
    for name, role in (("alice", "approver"), ("victor", "viewer"), ("ada", "admin")):
        token, key = operators.new_token()
        tokens[name] = token
        entries.append({"name": name, "key_sha256": key, "role": role})
    path = root / "operators.json"
    path.write_text(json.dumps({"operators": entries}))
    return path, tokens


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = Path(tmp_path_factory.mktemp("console"))
    operators_path, tokens = _operators_file(root)
    env = {"TETHER_OPERATORS_FILE": str(operators_path)}
    stack = DevStack(agent_modules=AGENT_MODULES, log_dir=root, env=env)
    with started_stack(stack):
        rt = Runtime(
            Settings(
                redis_url=stack.redis_url,
                operators_file=str(operators_path),
                agent_modules=AGENT_MODULES,
            )
        )
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="console", daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the console did not start within 20 s"
            time.sleep(0.05)
        try:
            yield Console(url=f"http://127.0.0.1:{port}", runtime=rt, tokens=tokens)
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    yield opened
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def sign_in(page: Page, console: Console, operator: str, path: str = "/") -> None:
    page.goto(console.page_url(path))
    page.fill("input[name=token]", console.tokens[operator])
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector("#operator")
