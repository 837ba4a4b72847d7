"""What every start method's ``Popen`` shares: waiting, signalling and closing a child."""

from __future__ import annotations

import atexit
import os
import select
import signal
import sys

from .. import util

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any, NoReturn

_own_sentinel_fd: int | None = None  # write end of this process's death pipe (held until exit)
#: What this child reports to its parent as it exits after a failure (see ``note_error``).
_error_report: bytes | None = None
#: Kinds of a child's error report: it failed before its target ran (preparing the parent's
#: setup: importing its main module, unpickling the process), or its target raised.
AT_START, IN_RUN = b"S", b"R"
#: A report fits in one atomic pipe write (PIPE_BUF is at least 512 bytes).
_REPORT_MAX = 500


def set_own_sentinel_fd(fd: int | None) -> None:
    """Remember the fd whose closing tells our parent we died (a forked child closes it).

    A child that fails writes its error report there just before it exits (``send_error``):
    the parent reads it from its sentinel (the fork server forwards it with the exit status).
    """
    global _own_sentinel_fd
    _own_sentinel_fd = fd


def error_line(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` on one line, cut short; never raises (what a traceback's
    last line says, for a parent that only sees the exit code)."""
    try:
        kind = type(exc)
        name = kind.__qualname__
        if kind.__module__ not in ("builtins", "__main__", "__mp_main__"):
            name = f"{kind.__module__}.{name}"
        text = " ".join(str(exc).split())
        line = f"{name}: {text}" if text else name
    except BaseException:
        line = "an exception whose str() failed"
    return line if len(line) <= _REPORT_MAX else line[:_REPORT_MAX - 3] + "..."


def note_error(line: str, kind: bytes) -> None:
    """Remember the error this child fails with, for ``send_error`` (the last one wins)."""
    global _error_report
    try:
        _error_report = kind + line.encode("utf-8", "replace")[:_REPORT_MAX]
    except BaseException:
        pass


def send_error() -> None:
    """Write the noted error report to the parent, if any (last thing before exiting)."""
    global _error_report
    report, _error_report = _error_report, None
    if report is None or _own_sentinel_fd is None:
        return
    try:
        os.write(_own_sentinel_fd, report)
    except OSError:
        pass


def parse_error_report(data: bytes) -> tuple[str, bool] | None:
    """``(line, at_start)`` of a child's error report as the parent read it (None: none)."""
    if len(data) < 2 or data[:1] not in (AT_START, IN_RUN):
        return None
    return data[1:].decode("utf-8", "replace"), data[:1] == AT_START


def after_fork_in_child() -> None:
    """Run first thing in a child made by ``os.fork`` (fork, and the fork server's
    children); such a child ends with ``exit_forked_child``."""
    # Our parent's death pipe must close when *our parent* exits, not when we do.
    if _own_sentinel_fd is not None:
        util.close_fds(_own_sentinel_fd)
        set_own_sentinel_fd(None)
    util._reset_exit_state_in_child()
    # The parent's atexit handlers are the parent's: only those the child registers run at
    # its exit (Python 3.13's behaviour, gh-83856).
    global _forked_child_pid
    atexit._clear()
    atexit.register(util._exit_function)
    _forked_child_pid = os.getpid()
    from .. import _stdlib_compat

    _stdlib_compat.after_fork_in_child()


_forked_child_pid: int | None = None  # set in a forked child once the parent's handlers are gone


def exit_forked_child(code: int) -> NoReturn:
    """End a forked child: run the atexit handlers it registered (``os._exit`` alone skips
    them; a spawned child runs them at interpreter exit), then ``os._exit(code)``.

    A child that failed before ``after_fork_in_child`` still holds its parent's handlers:
    those must not run here, so it only exits.
    """
    try:
        if _forked_child_pid == os.getpid():
            atexit._run_exitfuncs()
            util._flush_std_streams()
    finally:
        try:
            send_error()
        finally:
            os._exit(code)


def pickle_start_data(popen: Any, process_obj: Any) -> tuple[bytes, bytes]:
    """What a fresh child (spawn, forkserver) is sent: its preparation data and its process
    object, both pickled while ``popen`` is the spawning Popen (fds it holds travel along)."""
    import pickle

    from .. import _spawning, reduction
    from .bootstrap import get_preparation_data

    check_not_importing_main(popen.method)
    _spawning.set_spawning_popen(popen)
    try:
        prep = get_preparation_data(process_obj._name, popen.method, popen)
        return pickle.dumps(prep, pickle.HIGHEST_PROTOCOL), bytes(reduction.dumps(process_obj))
    finally:
        _spawning.set_spawning_popen(None)


def wait_fd(fd: int, timeout: float | None) -> bool:
    """Whether ``fd`` becomes readable (or hung up) within ``timeout`` seconds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))


class PopenBase:
    """A child that this process can ``waitpid`` for (fork and spawn)."""

    method = ""
    pid: int
    sentinel: int
    returncode: int | None = None
    finalizer: util.Finalize | None = None
    _error: tuple[str, bool] | None = None
    _error_read = False

    def child_error(self) -> tuple[str, bool] | None:
        """The error the child reported as it exited after a failure: ``(line, at_start)``,
        ``line`` the last line of its traceback, ``at_start`` True if it failed before its
        target ran (e.g. importing the parent's main module). None: it ran, or said nothing.
        """
        if self._error_read or self.returncode is None:
            return self._error
        self._error_read = True
        fd = self.sentinel
        if fd is None or (self.finalizer is not None and not self.finalizer.still_active()):
            return None  # closed: the fd number may be another file's now
        try:
            if wait_fd(fd, 0):
                self._error = parse_error_report(os.read(fd, _REPORT_MAX + 1))
        except (OSError, ValueError):
            pass
        return self._error

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            try:
                pid, sts = os.waitpid(self.pid, flag)
            except ChildProcessError:
                # Reaped elsewhere (e.g. a SIGCHLD handler): we can't know the code.
                if self.sentinel is not None and wait_fd(self.sentinel, 0 if flag else None):
                    self.returncode = 255
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(sts)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            if timeout is not None and not wait_fd(self.sentinel, timeout):
                return None
            return self.poll(0)
        return self.returncode

    def _send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            except OSError:
                if self.wait(timeout=0.1) is None:
                    raise

    def terminate(self) -> None:
        self._send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._send_signal(signal.SIGKILL)

    def interrupt(self) -> None:
        self._send_signal(signal.SIGINT)

    def close(self) -> None:
        if self.finalizer is not None:
            self.finalizer()


_BOOTSTRAP_ERROR = """
An attempt was made to start a new process while this process was still importing the main
module of its parent (it was started with the {method!r} start method, which re-imports the
main module in the child).

This usually means the main module starts processes at import time. Put the code that starts
processes under the main guard, so that it runs only in the parent:

    if __name__ == '__main__':
        polyproc.freeze_support()   # only needed for frozen executables
        ...

(See "Safe importing of main module" in the multiprocessing documentation.)"""


def check_not_importing_main(method: str) -> None:
    """Refuse to start a process while this child still imports its parent's main module."""
    from .. import process

    if getattr(process.current_process(), "_inheriting", False):
        raise RuntimeError(_BOOTSTRAP_ERROR.format(method=method))


_executable: str | None = None


def get_executable() -> str:
    return _executable or sys.executable


def set_executable(exe: str) -> None:
    global _executable
    _executable = os.fsdecode(exe)


def interpreter_args() -> list[str]:
    """Command-line flags that reproduce this interpreter's settings (-O, -X, -W, ...)."""
    import subprocess

    fn = getattr(subprocess, "_args_from_interpreter_flags", None)
    return list(fn()) if fn is not None else []


def child_command(code: str) -> list[str]:
    """The argv of a fresh interpreter running ``code``.

    The child must find polyproc where this process found it, also when only a ``sys.path``
    entry added at run time leads there (a vendored copy, a notebook's
    ``sys.path.insert(0, "src")``, a checkout used without installing): that directory goes
    first on the child's path unless the child has it already (its full ``sys.path`` comes
    with the preparation data later).
    """
    root = package_root()
    # Whole-program mode (polyproc.install()) comes first, before anything imports the
    # stdlib's multiprocessing in the child.
    boot = (f"import sys\nif {root!r} not in sys.path: sys.path.insert(0, {root!r})\n"
            "import os\nif os.environ.get('POLYPROC_INSTALL'):\n"
            "    from polyproc._install import install_from_env; install_from_env()\n"
            f"{code}")
    return [get_executable(), *interpreter_args(), "-c", boot, "--polyproc-fork"]


def package_root() -> str:
    """The directory that holds this polyproc package (what ``import polyproc`` searched)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_frames(fd: int, *frames: bytes | memoryview) -> None:
    """Write length-prefixed frames to a pipe (the child may have died: ignore EPIPE)."""
    try:
        for frame in frames:
            data = len(frame).to_bytes(8, "big")
            _write_all(fd, data)
            _write_all(fd, frame)
    except BrokenPipeError:
        pass


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_frame(fd: int) -> bytes:
    size = int.from_bytes(_read_exact(fd, 8), "big")
    return _read_exact(fd, size)


def _read_exact(fd: int, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    pos = 0
    while pos < n:
        got = os.readv(fd, [view[pos:]])
        if got == 0:
            raise EOFError("parent closed the pipe before sending the process data")
        pos += got
    return bytes(buf)
