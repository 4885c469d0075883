"""An agent whose model hangs, for the time-limit test; it notes how the hang ended.

Loaded by a worker the test starts (TETHER_AGENT_MODULES), never by the suite's stack.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tether import Agent, ScriptedModel
from tether.models import ModelResponse, text
from tether.store.state import ChatMessage

HANG_S = 60.0


def _hang(messages: list[ChatMessage]) -> ModelResponse:
    started = time.monotonic()
    try:
        # A socket read with no answer would do the same: both yield to gevent's hub.
        time.sleep(HANG_S)
    except BaseException as exc:
        Path(os.environ["STUCK_OUTCOME"]).write_text(
            f"{type(exc).__name__} after {time.monotonic() - started:.1f}s: {exc}"
        )
        raise
    return text("answered after all")


hangs_forever = Agent(
    name="hangs_forever",
    instructions="Never answer.",
    model=ScriptedModel(_hang, label="hangs"),
)


def _hang_once(messages: list[ChatMessage]) -> ModelResponse:
    """Hang the first time only, as a step whose worker was paused past its soft limit."""
    tried = Path(os.environ["STUCK_OUTCOME"]).with_name("hung-once")
    if not tried.exists():
        tried.write_text("hung")
        time.sleep(HANG_S)
    return text("answered on the retry")


hangs_once = Agent(
    name="hangs_once",
    instructions="Answer the second time.",
    model=ScriptedModel(_hang_once, label="hangs-once"),
)
