"""Starting pool workers when the system is short of something (fds, memory, processes).

A replacement worker that cannot start is not a reason for the dispatcher (and so the pool) to
fail: ``StartRetry`` keeps the slots without a worker and when to try them again (back-off from
10 ms, doubling to 1 s, driven by the dispatcher's selector timeout); the helpers here say
what ran out and what to do about it. Also: stopping workers that started but cannot be
used, and the socket buffer each worker's connection asks for.

Nothing here imports a module on the failure path: out of fds, an import cannot open its file.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from typing import Any

#: Back-off between attempts to start a worker that failed to start (seconds).
RETRY_MIN, RETRY_MAX = 0.01, 1.0
#: Seconds without any running worker (while starts keep failing) after which the tasks
#: waiting for a worker fail; the pool keeps trying and runs what it is given later.
STALL_LIMIT = 20.0

#: errno values of failures that go away once what ran out is back.
TRANSIENT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.ENOBUFS,
                       errno.ENOSPC, errno.EINTR})


class StartRetry:
    """The pool slots whose worker could not be started, and when to try them again."""

    def __init__(self) -> None:
        self.slots: set[int] = set()
        self.at = 0.0  # monotonic time of the next attempt
        self.delay = RETRY_MIN
        self.alone_since: float | None = None  # since when no worker runs at all
        self.warned = False  # one warning per run of failures
        self.failures = 0  # failed attempts, ever (diagnostics, tests)
        self.error: BaseException | None = None  # the last one's error

    def failed(self, slot: int, exc: BaseException, workers_left: int) -> float:
        """Record a failed start; return how long no worker at all has run (0: some do)."""
        now = time.monotonic()
        self.slots.add(slot)
        self.failures += 1
        self.error = exc
        self.at = now + self.delay
        self.delay = min(self.delay * 2, RETRY_MAX)
        if workers_left:
            self.alone_since = None
            return 0.0
        if self.alone_since is None:
            self.alone_since = now
        return now - self.alone_since

    def recovered(self) -> None:
        """Every slot has its worker again."""
        self.delay = RETRY_MIN
        self.alone_since = None
        self.warned = False

    def due(self) -> bool:
        return bool(self.slots) and time.monotonic() >= self.at

    def timeout(self) -> float | None:
        """Seconds until the next attempt (None: nothing to retry)."""
        return max(0.0, self.at - time.monotonic()) if self.slots else None


def _fork_server_died(exc: BaseException) -> bool:
    forkserver = sys.modules.get("polyproc._spawn.forkserver")  # not loaded: not its error
    return forkserver is not None and isinstance(exc, forkserver.ForkServerError)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (raised starting a worker) should go away by itself."""
    return _fork_server_died(exc) or (isinstance(exc, OSError) and exc.errno in TRANSIENT)


def stall_error(message: str, cause: BaseException) -> BaseException:
    """A ``BrokenProcessPool`` (a plain ``ProcessError`` if even its module can't be
    imported now) for the tasks that waited too long for a worker."""
    try:
        from .._engine.broken import BrokenProcessPool

        err: BaseException = BrokenProcessPool(message)
    except Exception:
        from .._exceptions import ProcessError

        err = ProcessError(message)
    err.__cause__ = cause
    return err


def describe(exc: BaseException) -> str:
    """What ran out (or what else went wrong starting a worker), and what to do about it."""
    code = getattr(exc, "errno", None)
    if code == errno.EMFILE:
        resource = sys.modules.get("resource")
        try:
            limit = f" of {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}" if resource else ""
        except (OSError, ValueError):
            limit = ""
        return (f"this process has no free file descriptor left (EMFILE: its limit{limit} "
                "is reached); close files and sockets it no longer needs, or raise the limit "
                "(ulimit -n, resource.setrlimit(RLIMIT_NOFILE))")
    if code == errno.ENFILE:
        return ("the system's table of open files is full (ENFILE); close files, or raise "
                "fs.file-max")
    if code == errno.ENOMEM:
        return "out of memory (ENOMEM); free memory, or use fewer or smaller workers"
    if code == errno.EAGAIN:
        return ("the system refused a new process (EAGAIN: a process limit such as ulimit -u "
                "or the cgroup's pids.max is reached, or memory is short); end processes or "
                "raise the limit")
    if code in (errno.ENOBUFS, errno.ENOSPC):
        return (f"a kernel resource ran out ({errno.errorcode[code]}: {os.strerror(code)}); "
                "free some (fewer sockets, processes, epoll watches), or raise the limit")
    if _fork_server_died(exc):
        return "the fork server died, and a new one could not be used yet"
    return f"{type(exc).__name__}: {exc}"


def warn(message: str) -> None:
    """A RuntimeWarning that can never stop the dispatcher (say warnings are errors)."""
    try:
        import warnings  # loaded at interpreter start-up

        warnings.warn(message, RuntimeWarning, stacklevel=3)
    except Exception:
        pass


def add_note(exc: BaseException, note: str) -> None:
    try:
        exc.add_note(note)
    except Exception:
        pass


def reap_now(proc: Any) -> None:
    """Stop a worker that was started but cannot be used (it could not be watched)."""
    try:
        proc.kill()
        proc.join(5)
        if proc.exitcode is not None:
            proc.close()
    except (OSError, ValueError, AssertionError):
        pass


def stop_unwatched(procs: list[Any], socks: list[socket.socket]) -> None:
    """Stop worker processes started by a pool that could not be made (none runs a task)."""
    for sock in socks:
        sock.close()
    for proc in procs:
        try:
            proc.terminate()
        except (OSError, ValueError, AttributeError):
            pass
    deadline = time.monotonic() + 5
    for proc in procs:
        try:
            if not hasattr(proc, "sentinel"):
                proc.join()  # a custom context's Process-like object, without a timeout
                continue
            proc.join(max(0.0, deadline - time.monotonic()))
        except (OSError, ValueError, AssertionError):
            pass
        reap_now(proc)  # still running: killed; ended: closed


#: Socket buffer asked for each side of a worker's connection (the kernel caps it at
#: ``net.core.wmem_max``): a batch or its results then fit in the socket, so neither side
#: waits for the other to be scheduled to read a frame in pieces.
SOCKET_BUFFER = 4 << 20


def widen(sock: socket.socket) -> None:
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        except OSError:
            pass
