"""Module-level task functions for the pool and executor tests.

Spawn and forkserver workers import the module a task function lives in, so these live here,
away from the test modules: this module must not import pytest (or anything heavy).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- plain tasks


def sq(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def add3(a: int, b: int, c: int = 0) -> int:
    return a + b + c


def identity(x: Any) -> Any:
    return x


def getpid(_: Any = None) -> int:
    return os.getpid()


def sleep_sq(x: int, delay: float = 0.05) -> int:
    time.sleep(delay)
    return x * x


def sleep_for(delay: float) -> float:
    time.sleep(delay)
    return delay


def pid_after(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def fail_on(x: int, bad: int = 3) -> int:
    """Raise ValueError for ``bad``, else return ``x * 10``."""
    if x == bad:
        raise ValueError(f"bad value {x}")
    return x * 10


def raise_key(_: Any = None) -> None:
    raise KeyError("missing")


def fail_deep(x: int) -> int:
    return _deep_helper_in_worker(x)


def _deep_helper_in_worker(x: int) -> int:
    raise ZeroDivisionError(f"deep failure for {x}")


# ---------------------------------------------------------------- initializers

_STATE: dict[str, Any] = {}


def init_state(value: Any) -> None:
    _STATE["value"] = value
    _STATE["pid"] = os.getpid()


def read_state(_: Any = None) -> Any:
    return _STATE.get("value")


def init_raise(*_: Any) -> None:
    raise RuntimeError("initializer exploded")


# ---------------------------------------------------------------- faults


def _quiet_crash() -> None:
    """No core dump and no faulthandler report from a crash that a test causes on purpose."""
    try:
        import faulthandler
        import resource

        faulthandler.disable()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except Exception:
        pass


def fault(x: Any) -> Any:
    """``'kill'``: SIGKILL own worker; ``'abort'``: os.abort(); ``'exit'``: os._exit(3);
    ``'sleep:S'``: sleep S seconds and return S; anything else: returned doubled."""
    if x == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    elif x == "abort":
        _quiet_crash()
        os.abort()
    elif x == "exit":
        os._exit(3)
    elif isinstance(x, str) and x.startswith("sleep:"):
        delay = float(x.split(":", 1)[1])
        time.sleep(delay)
        return delay
    return x * 2


def die_first_time(marker: str, value: int) -> int:
    """SIGKILL own worker the first time (``marker`` does not exist yet), then return value."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return value


def log_task(x: int, logger_name: str = "polyproc.test.worker") -> int:
    logging.getLogger(logger_name).warning("task %d in pid %d", x, os.getpid())
    return x + 1


# ---------------------------------------------------------------- pickling


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable objects refuse to be pickled")


def return_unpicklable(_: Any = None) -> Any:
    return threading.Lock()


class UnpicklableError(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.lock = threading.Lock()

    def __reduce__(self) -> Any:
        raise TypeError("this exception cannot be pickled")


def raise_unpicklable(_: Any = None) -> None:
    raise UnpicklableError("raised in the worker")


def _refuse_to_unpickle(*args: Any) -> Any:
    raise TypeError(f"refuses to be unpickled {args!r}")


class RefusingError(Exception):
    """Pickles fine, but cannot be unpickled (like an exception whose ``__init__`` takes other
    arguments than it passes to ``Exception.__init__``; this one fails whatever copyreg says)."""

    def __reduce__(self) -> Any:
        return _refuse_to_unpickle, self.args


class Unloadable:
    def __reduce__(self) -> Any:
        return _refuse_to_unpickle, ("value",)


def raise_refusing(_: Any = None) -> None:
    raise RefusingError("raised in the worker")


def return_unloadable(_: Any = None) -> Any:
    return Unloadable()


def init_raise_refusing(*_: Any) -> None:
    raise RefusingError("init failed")


class ExitAtPickle:
    """Calls ``sys.exit(3)`` when pickled (the stdlib's test_deadlock has one like it)."""

    def __reduce__(self) -> Any:
        raise SystemExit(3)


def return_exit_at_pickle(_: Any = None) -> Any:
    return ExitAtPickle()


# ---------------------------------------------------------------- numpy


def np_double(a: Any) -> Any:
    return a * 2


def np_make(n: int, seed: int) -> Any:
    import numpy as np

    return np.arange(n, dtype=np.float64) + seed


def np_checksum(a: Any) -> tuple:
    return (a.shape, str(a.dtype), float(a.sum()))


# ---------------------------------------------------------------- memory


def tiny(x: int) -> int:
    return x & 1


def tiny_gen(n: int):  # noqa: ANN201
    yield from range(n)


# ---------------------------------------------------------------- references


class DelMarker:
    """Writes a file when the copy of it in a worker is collected."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.owner = os.getpid()  # the caller's own copy writes nothing

    def __del__(self) -> None:
        if os.getpid() == self.owner:
            return
        try:
            with open(self.path, "w") as f:
                f.write(str(os.getpid()))
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def drop(_: Any) -> None:
    return None


class Holder:
    """An object whose bound method is submitted: it must be freed once the task is done."""

    def method(self) -> int:
        return 7


def make_holder(_: Any = None) -> Holder:
    return Holder()
