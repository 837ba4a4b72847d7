"""Task functions for tests/test_fault_matrix.py (importable by spawn and forkserver workers;
no pytest here).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

#: Room left above a worker's address space at start-up by ``limit_memory``: a task that
#: asks for more gets a MemoryError (as under ``ulimit -v``, or a container's limit).
HEADROOM = 256 << 20


def limit_memory(headroom: int = HEADROOM) -> None:
    """Initializer: cap this worker's address space (RLIMIT_AS) at its size now + headroom."""
    import resource

    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _quiet_crash() -> None:
    """No core dump and no faulthandler report from a crash a test causes on purpose."""
    import faulthandler
    import resource

    faulthandler.disable()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def fault(x: Any) -> Any:
    """A task that dies or fails as ``x`` says; any other ``x`` is returned doubled.

    ``exit``: os._exit(3); ``abort``: os.abort(); ``segv``: a segfault (reads address 0);
    ``kill``: SIGKILL itself; ``oom``: asks for 1 GiB more than ``limit_memory`` allows
    (MemoryError); ``sys.exit``: sys.exit(4) (the caller gets SystemExit).
    """
    if x == "exit":
        os._exit(3)
    if x == "abort":
        _quiet_crash()
        os.abort()
    if x == "segv":
        import ctypes

        _quiet_crash()
        ctypes.string_at(0)
    if x == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    if x == "oom":
        return len(bytearray(HEADROOM + (1 << 30)))
    if x == "sys.exit":
        sys.exit(4)
    return x * 2


def size(x: Any) -> int:
    return len(x)


def _refuse(*_: Any) -> Any:
    raise TypeError("this argument refuses to be unpickled in the worker")


class RefusesToLoad:
    """Pickles fine in the parent; rebuilding it in the worker raises TypeError."""

    def __reduce__(self) -> Any:
        return _refuse, ()


def big_result(n: int) -> bytearray:
    """``n`` bytes, the last one 7."""
    b = bytearray(n)
    b[-1] = 7
    return b


def inner_pool(kind: str) -> Any:
    """Start a pool (or an executor, or a thread pool) inside a pool worker."""
    import polyproc

    if kind == "pool":
        with polyproc.Pool(1) as pool:
            return pool.map(abs, [-1, -2])
    if kind == "executor":
        import polyproc.futures as pf

        with pf.ProcessPoolExecutor(1) as ex:
            return list(ex.map(abs, [-1, -2]))
    with polyproc.ThreadPool(2) as pool:
        return pool.map(abs, [-1, -2])


def pool_in_daemon(conn: Any) -> None:
    """Target of a daemon Process: try to start a pool, tell the parent what happened."""
    import polyproc

    try:
        with polyproc.Pool(1) as pool:
            conn.send(("ok", pool.map(abs, [-1])))
    except BaseException as e:  # noqa: BLE001 - reported to the test
        conn.send((type(e).__name__, str(e)))
    conn.close()


def noop() -> None:
    return None


def sq(x: int) -> int:
    return x * x
