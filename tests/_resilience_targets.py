"""Task functions for tests/test_pool_resilience.py (workers import them by name).

Like ``_pool_targets``: no pytest, nothing heavy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def gated(started_dir: str, gate: str, value: int) -> tuple[int, int]:
    """Say "running" (a file in ``started_dir``), wait for the file ``gate``, then return
    ``(value * 10, pid)``. Bounded: raises after 60 s without a gate."""
    Path(started_dir, f"{value}-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no gate file {gate} after 60 s")
        time.sleep(0.005)
    return value * 10, os.getpid()


def started(started_dir: str) -> list[tuple[int, int]]:
    """The (value, pid) of every ``gated`` task that is running or ran."""
    out = []
    for name in os.listdir(started_dir):
        value, pid = name.split("-")
        out.append((int(value), int(pid)))
    return sorted(out)
