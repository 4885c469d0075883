"""Independent CLI processes run side by side: most of each is Python importing tether."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor


def tether_cli(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m tether.cli.main *args``, as an operator's shell would run it."""
    return subprocess.run(
        [sys.executable, "-m", "tether.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tether_at_once(
    commands: Sequence[Sequence[str]], env: dict[str, str], timeout: float = 60
) -> list[subprocess.CompletedProcess[str]]:
    """``tether_cli`` for each of ``commands``, all started together.

    Only for commands that do not depend on one another (reads, refusals): each
    is the same process, run the same way, as when they ran one after another.
    Returns the results in the order of ``commands``.
    """
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: tether_cli(*args, env=env, timeout=timeout), commands))
