"""Task functions of tests/test_backend_faults.py, at module level so that every backend's
workers (processes, threads, Dask workers with tests/ on their path) find them by name."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path


def sq(x):
    return x * x


def fail_on_3(x):
    if x == 3:
        raise ValueError(f"bad value {x}")
    return x


def sleep_for(delay):
    time.sleep(delay)
    return delay


def sleep_if_3(x):
    if x == 3:
        time.sleep(60)
    return x


def die_on_7(x):
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def pid_then_sleep(path, delay):
    """First attempt: record this worker's pid in ``path`` and sleep; later ones: return."""
    p = Path(path)
    if p.exists():
        return "second attempt"
    p.write_text(str(os.getpid()))
    time.sleep(delay)
    return "first attempt"


def exits(code):
    sys.exit(code)


def unpicklable_on_5(x):
    return threading.Lock() if x == 5 else x
