"""The resource tracker: unlinks named semaphores and shared memory that nobody released.

One tracker process serves a whole process tree. Every process of the tree holds the write
end of the tracker's pipe (fork children inherit it, spawn and forkserver children receive it
while starting) and tells it ``REGISTER``/``UNREGISTER`` for each named resource it creates or
releases. When every process of the tree has exited, by any means including SIGKILL, the pipe
reaches EOF and the tracker unlinks what is still registered, warning with the names.

Should the tracker itself die (it should not: SIGKILL, the OOM killer), the next process of
the tree that uses it notices (its pipe has no reader any more), starts a new one, and
registers with it again every name that this process registered and still holds, with a
warning; names that only other processes had registered are not known here and may leak.
"""

from __future__ import annotations

import _thread
import os
import sys

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
        self._lock = _thread.allocate_lock()
        self._fd: int | None = None
        self._proc: int | None = None  # the tracker's pid, if this process started it
        # What this process registered and has not unregistered, in order: told again to a
        # tracker started after the first one died.
        self._held: dict[tuple[str, str], None] = {}

    def getfd(self) -> int:
        """The tracker pipe's write end, starting the tracker if needed."""
        self.ensure_running()
        assert self._fd is not None
        return self._fd

    def _set_inherited_fd(self, fd: int) -> None:
        os.set_inheritable(fd, False)
        self._fd = fd

    def ensure_running(self) -> None:
        """Start the tracker process unless this tree already has one (a live one)."""
        with self._lock:
            if self._fd is not None:
                if _has_reader(self._fd):
                    return
                os.close(self._fd)  # the tracker died
                self._fd = None
                self._lost = True
            self._start_unlocked()
            if self._lost:
                self._lost = False
                self._register_again_unlocked()

    _lost = False  # a tracker of ours died: tell the next one what we hold

    def _register_again_unlocked(self) -> None:
        held = list(self._held)
        for rtype, name in held:
            os.write(self._fd, f"REGISTER:{rtype}:{name}\n".encode("ascii"))  # type: ignore[arg-type]
        import warnings

        warnings.warn(
            "polyproc resource tracker: the tracker process died unexpectedly; a new one was "
            f"started, and the {len(held)} named resource(s) this process holds were "
            "registered with it. Named resources that only other processes had registered "
            "may leak (unlink them yourself).", RuntimeWarning, stacklevel=3)

    def _start_unlocked(self) -> None:
        import signal

        from .._spawn._popen import get_executable

        # The tracker starts while the first child does, on the same CPUs: keep it light.
        # Skip `site` (-S; .pth hooks can cost more than the tracker itself) and run this
        # file's code without importing the polyproc package (whose __init__ imports most of
        # polyproc); `posix_spawn`, not `subprocess` (an import of its own on a first start).
        # The command line still names this module: `doctor` and the tests find trackers so.
        if self._proc is not None:  # the tracker we started died: don't leave a zombie
            try:
                os.waitpid(self._proc, os.WNOHANG)
            except ChildProcessError:
                pass
        r, w = os.pipe()
        try:
            path = os.path.abspath(__file__)
            if os.path.isfile(path):
                boot = (f"__name__ = {__name__!r}; p = {path!r}; "
                        f"exec(compile(open(p, 'rb').read(), p, 'exec')); main({r})")
            else:  # not a plain file (a zip?): import it, from where this process found it
                pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(path)))
                boot = (f"import sys; sys.path.insert(0, {pkg_parent!r}); "
                        f"from {__name__} import main; main({r})")
            os.set_inheritable(r, True)  # the read end only: the tracker holds no write end
            exe = get_executable()
            # Like subprocess's defaults: stdin from /dev/null, SIGPIPE and SIGXFSZ default.
            self._proc = os.posix_spawn(
                exe, [exe, "-S", "-c", boot], os.environ,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
            _to_background(self._proc)
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
            # The tracker died since ensure_running looked: start a new one (which is told
            # again everything held, this name included if it is a REGISTER).
            self.ensure_running()
            if cmd != "REGISTER":
                os.write(self._fd, msg)  # type: ignore[arg-type]

    def register(self, name: str, rtype: str) -> None:
        """Ask the tracker to unlink ``name`` if the tree exits without unregistering it."""
        self._held[(rtype, name)] = None
        self._send("REGISTER", name, rtype)

    def unregister(self, name: str, rtype: str) -> None:
        """Tell the tracker that ``name`` was released."""
        self._held.pop((rtype, name), None)
        self._send("UNREGISTER", name, rtype)


def _has_reader(fd: int) -> bool:
    """Whether the tracker (the only reader of its pipe) still holds the read end: the write
    end of a pipe nobody reads polls as an error."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return not any(ev & select.POLLERR for _fd, ev in poller.poll(0))


def _to_background(pid: int) -> None:
    """Run the tracker at the lowest priority (nice 19): its start-up (an interpreter, ~10 ms
    of CPU) then takes no CPU from the first workers, which start at the same moment. It
    still gets CPU on a busy machine (unlike SCHED_IDLE, ~5 times more), and needs little:
    to read its pipe, and to clean up once the tree is gone."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    except (AttributeError, OSError):  # no such call here, or not allowed: leave it be
        pass


_tracker = ResourceTracker()


def _after_fork_in_child() -> None:
    # A child forked while another thread held the lock must not inherit it locked; what the
    # parent registered is the parent's to register again, not the child's.
    _tracker._lock = _thread.allocate_lock()
    _tracker._held = {}


os.register_at_fork(after_in_child=_after_fork_in_child)
ensure_running = _tracker.ensure_running
getfd = _tracker.getfd
register = _tracker.register
unregister = _tracker.unregister


def main(fd: int) -> None:
    """Run the tracker: read commands until every writer is gone, then clean up."""
    # Hold nothing but our pipe and the standard streams (posix_spawn passed on every
    # inheritable fd; a pipe of someone else's held open here would never see EOF).
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        other = int(name)
        if other > 2 and other != fd:
            try:
                os.close(other)
            except OSError:
                pass
    # Ctrl-C and SIGTERM sent to the whole process group must not stop the cleanup.
    import _signal  # not `signal`: its enums cost the tracker's start more than the rest

    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    _signal.signal(_signal.SIGTERM, _signal.SIG_IGN)
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
            leaked = []
            for name in sorted(names):
                try:
                    _CLEANUP[rtype](name)
                except FileNotFoundError:
                    pass  # unlinked already (e.g. by a process that never registered it)
                except Exception as e:
                    print(f"polyproc resource tracker: cannot clean up {name!r}: {e}",
                          file=sys.stderr)
                else:
                    leaked.append(name)
            if leaked:
                import warnings

                warnings.warn(
                    f"polyproc resource tracker: {len(leaked)} leaked {rtype} object(s) to "
                    f"clean up at shutdown: {leaked}",
                    stacklevel=1,
                )
