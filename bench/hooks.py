"""Scheduling delay: how long a ready message waited before a worker started it.

Bench-only Celery signal handlers, installed in every process that publishes or
consumes when ``BENCH_DELAY_DIR`` is set (bench.agents imports this module, and
workers import the agent modules at start). The publisher stamps each message
with its wall-clock send time in a header; the worker, at ``task_prerun``,
records ``start - sent`` and appends the samples to a file per process.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import before_task_publish, task_prerun, worker_process_shutdown

HEADER = "bench_sent_at"
FLUSH_EVERY_S = 0.5

_samples: list[str] = []
_lock = threading.Lock()
_last_flush = 0.0
_installed = False


def delay_dir() -> Path | None:
    value = os.environ.get("BENCH_DELAY_DIR")
    return Path(value) if value else None


def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[HEADER] = time.time()


def _record(task: Any = None, **_: Any) -> None:
    global _last_flush
    now = time.time()
    request = getattr(task, "request", None)
    sent = getattr(request, HEADER, None)
    if sent is None:
        sent = (getattr(request, "headers", None) or {}).get(HEADER)
    if sent is None:
        return
    info = getattr(request, "delivery_info", None) or {}
    queue = info.get("routing_key") or "?"
    with _lock:
        _samples.append(f"{now:.6f} {now - float(sent):.6f} {queue}\n")
        due = now - _last_flush >= FLUSH_EVERY_S
        if due:
            _last_flush = now
    if due:
        flush()


def flush(**_: Any) -> None:
    target = delay_dir()
    if target is None:
        return
    with _lock:
        lines = _samples[:]
        _samples.clear()
    if lines:
        with (target / f"delays-{os.getpid()}.txt").open("a") as out:
            out.writelines(lines)


def install() -> None:
    """Connect the handlers once, only when BENCH_DELAY_DIR asks for them."""
    global _installed
    if _installed or delay_dir() is None:
        return
    before_task_publish.connect(_stamp, weak=False)
    task_prerun.connect(_record, weak=False)
    worker_process_shutdown.connect(flush, weak=False)
    _installed = True


def read_samples(directory: Path) -> list[tuple[float, float, str]]:
    """(started_at, delay_s, queue) for every message any worker started."""
    samples: list[tuple[float, float, str]] = []
    for path in directory.glob("delays-*.txt"):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                samples.append((float(parts[0]), float(parts[1]), parts[2]))
    return samples
