"""What a model, a tool or an upstream system wrote reaches the terminal as text: no
markup and no control sequence, which could hide part of what an approver reads."""

from __future__ import annotations

import io

from rich.console import Console

from tether.cli import render
from tether.cli.terminal_text import escape

# Conceal the rest of the line, then put the clipboard to "evil" (OSC 52), then a
# one-byte CSI, then markup.
HOSTILE = "pay 5\x1b[8m000\x1b[0m \x1b]52;c;ZXZpbA==\x07 \x9b2J [red]x[/red]"


def _printed(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system=None).print(renderable)
    return out.getvalue()


def test_control_characters_are_shown_not_sent() -> None:
    shown = escape(HOSTILE)
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert "pay 5\\x1b[8m000" in shown
    assert escape("line one\n\tline two") == "line one\n\tline two"


def test_refused_events_and_tables_print_hostile_text_as_text() -> None:
    refused = _printed(render.rejection_text({"at": "now", "reason": HOSTILE, "payload": HOSTILE}))
    table = _printed(
        render.fitted_table("runs", ("run", "goal"), [["run_1", HOSTILE]], wide="goal", width=200)
    )
    for printed in (refused, table):
        assert "\x1b]52" not in printed and "\x1b[8m" not in printed and "\x9b" not in printed
        assert "[red]x[/red]" in printed
