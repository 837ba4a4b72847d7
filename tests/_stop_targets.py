"""Task functions for tests/test_stop_task.py (importable by spawn and forkserver workers;
no pytest here)."""

from __future__ import annotations

import os
import signal


def _say_pid(path: str) -> None:
    # Atomic: the test never reads a half-written pid.
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


def spin(path: str | None = None) -> None:
    """Tell ``path`` this worker's pid, then loop forever without ever yielding."""
    if path is not None:
        _say_pid(path)
    while True:
        pass


def stop_self(path: str) -> str:
    """Tell ``path`` this worker's pid, then SIGSTOP this worker (it runs on only if resumed)."""
    _say_pid(path)
    os.kill(os.getpid(), signal.SIGSTOP)
    return "resumed"


def touch(path: str) -> str:
    """Leave a trace that the task ran."""
    open(path, "a").close()
    return path


def wait_file(path: str, timeout: float = 60.0) -> bool:
    """Block until ``path`` exists (a gate the test opens), at most ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def spin_at(x: int, at: int, path: str) -> int:
    """``x * x``, except for ``x == at``: tell ``path`` the pid and loop forever."""
    if x == at:
        spin(path)
    return x * x
