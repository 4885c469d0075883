"""Text from models, tools and upstream systems as the CLI prints it.

rich markup is escaped, and control characters are shown as ``\\xNN``: an escape
sequence in a tool's output could otherwise hide part of the line an approver reads
before deciding (ESC[8m), rewrite the screen, or set the terminal's clipboard (OSC 52),
and rich passes ESC through to the terminal.
"""

from __future__ import annotations

import re

from rich.markup import escape as escape_markup

# C0 controls but tab and newline, DEL, and the C1 controls (CSI as one byte, 0x9b).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape(text: str) -> str:
    """``text`` safe to print through rich: no markup, no terminal control."""
    return escape_markup(_CONTROL.sub(lambda found: f"\\x{ord(found[0]):02x}", text))
