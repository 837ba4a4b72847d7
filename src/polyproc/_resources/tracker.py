"""The resource tracker: unlinks named semaphores and shared memory that nobody released.

One tracker process serves a whole process tree. Every process of the tree holds the write
end of the tracker's pipe (fork children inherit it, spawn and forkserver children receive it
while starting) and tells it ``REGISTER``/``UNREGISTER`` for each named resource it creates or
releases. When every process of the tree has exited, by any means including SIGKILL, the pipe
reaches EOF and the tracker unlinks what is still registered, warning with the names.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings

__all__ = ["register", "unregister", "ensure_running", "getfd"]

_MAX_NAME = 400  # keeps each message below PIPE_BUF, so concurrent writes never interleave


def _unlink_semaphore(name: str) -> None:
    import _multiprocessing

    _multiprocessing.sem_unlink(name)


def _unlink_shared_memory(name: str) -> None:
    import _posixshmem

    _posixshmem.shm_unlink(name)


_CLEANUP = {
    "semaphore": _unlink_semaphore,
    "shared_memory": _unlink_shared_memory,
}


class ResourceTracker:
    """This process's connection to its tree's tracker process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._proc: object | None = None

    def getfd(self) -> int:
        """The tracker pipe's write end, starting the tracker if needed."""
        self.ensure_running()
        assert self._fd is not None
        return self._fd

    def _set_inherited_fd(self, fd: int) -> None:
        os.set_inheritable(fd, False)
        self._fd = fd

    def ensure_running(self) -> None:
        """Start the tracker process unless this tree already has one."""
        with self._lock:
            if self._fd is not None:
                return
            self._start_unlocked()

    def _start_unlocked(self) -> None:
        import subprocess

        from .._spawn._popen import get_executable

        # The tracker needs only the stdlib and polyproc: skip `site` (-S), which on many
        # machines imports .pth hooks that cost more than the tracker itself, and find
        # polyproc where this process found it.
        pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        r, w = os.pipe()
        try:
            cmd = [get_executable(), "-S", "-c",
                   f"import sys; sys.path.insert(0, {pkg_parent!r}); "
                   f"from polyproc._resources.tracker import main; main({r})"]
            self._proc = subprocess.Popen(cmd, pass_fds=[r], close_fds=True,
                                          stdin=subprocess.DEVNULL)
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        self._fd = w

    def _send(self, cmd: str, name: str, rtype: str) -> None:
        if rtype not in _CLEANUP:
            raise ValueError(f"cannot track resources of type {rtype!r}")
        if len(name) > _MAX_NAME or "\n" in name or ":" in rtype:
            raise ValueError(f"resource name too long or malformed: {name!r}")
        msg = f"{cmd}:{rtype}:{name}\n".encode("ascii")
        self.ensure_running()
        try:
            os.write(self._fd, msg)  # type: ignore[arg-type]
        except BrokenPipeError:
            # The tracker died (it should not): start a new one and tell it again.
            with self._lock:
                self._fd = None
                self._start_unlocked()
            os.write(self._fd, msg)  # type: ignore[arg-type]

    def register(self, name: str, rtype: str) -> None:
        """Ask the tracker to unlink ``name`` if the tree exits without unregistering it."""
        self._send("REGISTER", name, rtype)

    def unregister(self, name: str, rtype: str) -> None:
        """Tell the tracker that ``name`` was released."""
        self._send("UNREGISTER", name, rtype)


_tracker = ResourceTracker()
# A child forked while another thread held the lock must not inherit it locked.
os.register_at_fork(after_in_child=lambda: setattr(_tracker, "_lock", threading.Lock()))
ensure_running = _tracker.ensure_running
getfd = _tracker.getfd
register = _tracker.register
unregister = _tracker.unregister


def main(fd: int) -> None:
    """Run the tracker: read commands until every writer is gone, then clean up."""
    # Ctrl-C and SIGTERM sent to the whole process group must not stop the cleanup.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    registered: dict[str, set[str]] = {rtype: set() for rtype in _CLEANUP}
    try:
        with open(fd, "rb") as f:
            for line in f:
                try:
                    cmd, rtype, name = line.decode("ascii").rstrip("\n").split(":", 2)
                    names = registered[rtype]
                    if cmd == "REGISTER":
                        names.add(name)
                    elif cmd == "UNREGISTER":
                        names.discard(name)
                except Exception as e:  # a malformed line must not stop the tracker
                    print(f"polyproc resource tracker: ignoring {line!r}: {e}", file=sys.stderr)
    finally:
        for rtype, names in registered.items():
            if not names:
                continue
            warnings.warn(
                f"polyproc resource tracker: {len(names)} leaked {rtype} object(s) to clean "
                f"up at shutdown: {sorted(names)}",
                stacklevel=1,
            )
            for name in names:
                try:
                    _CLEANUP[rtype](name)
                except FileNotFoundError:
                    pass
                except Exception as e:
                    print(f"polyproc resource tracker: cannot clean up {name!r}: {e}",
                          file=sys.stderr)
