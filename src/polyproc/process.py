"""The ``Process`` object model: the public face of a child process and of this process.

``BaseProcess`` holds the identity and state of a process; starting it is delegated to a
start-method specific ``Popen`` (see ``polyproc._spawn``), chosen by the context that made it.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import weakref

from . import util

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Any

__all__ = ["BaseProcess", "current_process", "active_children", "parent_process"]

_current_process: BaseProcess
_parent_process: BaseProcess | None = None
_process_counter = itertools.count(1)
ORIGINAL_DIR = os.path.abspath(os.getcwd())  # cwd at import; children resolve a relative main path with it


def current_process() -> BaseProcess:
    """Return the Process object of the current process."""
    return _current_process


def parent_process() -> BaseProcess | None:
    """Return the Process object of the parent, or None in the main process."""
    return _parent_process


def active_children() -> list[BaseProcess]:
    """Return the list of this process's children still alive (reaping finished ones)."""
    _cleanup()
    return [p for p in list(_children_objects.values()) if p._popen is not None]


_children_objects: dict[int, BaseProcess] = {}
#: Every Process started here that is still referenced (the stdlib's test-suite hook: its
#: fixtures warn about processes left over by a test).
_dangling: weakref.WeakSet[BaseProcess] = weakref.WeakSet()


def _cleanup() -> None:
    for key, p in list(_children_objects.items()):
        popen = p._popen
        if popen is None or popen.poll() is not None:
            _children_objects.pop(key, None)


class AuthenticationString(bytes):
    """The authkey: bytes that refuse to be pickled except when starting a process."""

    def __reduce__(self) -> Any:
        from ._spawning import get_spawning_popen

        if get_spawning_popen() is None:
            raise TypeError(
                "Pickling an AuthenticationString object is disallowed for security reasons"
            )
        return AuthenticationString, (bytes(self),)


class BaseProcess:
    """A process: run ``target(*args, **kwargs)`` (or an overridden ``run``) in a child."""

    _start_method: str | None = None
    _identity: tuple[int, ...]
    _config: dict[str, Any]

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        assert group is None, "group argument must be None for now"
        count = next(_process_counter)
        self._identity = _current_process._identity + (count,)
        self._config = _current_process._config.copy()
        self._parent_pid = os.getpid()
        self._parent_name = _current_process.name
        self._popen: Any = None
        self._closed = False
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs) if kwargs else {}
        self._name = name or (
            type(self).__name__ + "-" + ":".join(str(i) for i in self._identity)
        )
        if daemon is not None:
            self.daemon = daemon

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    def run(self) -> None:
        """Method to be run in the child; by default calls the target."""
        if self._target:
            self._target(*self._args, **self._kwargs)

    def start(self) -> None:
        """Start the child process."""
        self._check_closed()
        assert self._popen is None, "cannot start a process twice"
        assert self._parent_pid == os.getpid(), (
            "can only start a process object created by current process"
        )
        assert not _current_process._config.get("daemon"), (
            "daemonic processes are not allowed to have children"
        )
        _cleanup()
        self._popen = self._Popen(self)
        self._sentinel = self._popen.sentinel
        # The target and arguments are not needed any more in the parent; drop them so
        # the objects they hold can be collected.
        del self._target, self._args, self._kwargs
        _children_objects[id(self)] = self
        _dangling.add(self)

    def terminate(self) -> None:
        """Terminate the process with SIGTERM."""
        self._check_closed()
        if self._popen is not None:
            self._popen.terminate()

    def kill(self) -> None:
        """Kill the process with SIGKILL."""
        self._check_closed()
        if self._popen is not None:
            self._popen.kill()

    def interrupt(self) -> None:
        """Interrupt the process with SIGINT (``Process.interrupt()`` of Python 3.14).

        Its main thread gets ``KeyboardInterrupt``, so ``finally`` blocks and context managers
        run; a child that ignores SIGINT goes on.
        """
        self._check_closed()
        if self._popen is not None:
            self._popen.interrupt()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the process ends or the timeout (seconds) passes."""
        self._check_closed()
        assert self._parent_pid == os.getpid(), "can only join a child process"
        assert self._popen is not None, "can only join a started process"
        res = self._popen.wait(timeout)
        if res is not None:
            _children_objects.pop(id(self), None)

    def is_alive(self) -> bool:
        """Whether the process is running."""
        self._check_closed()
        if self is _current_process:
            return True
        assert self._parent_pid == os.getpid(), "can only test a child process"
        if self._popen is None:
            return False
        returncode = self._popen.poll()
        if returncode is None:
            return True
        _children_objects.pop(id(self), None)
        return False

    def close(self) -> None:
        """Release the resources of a finished process; most methods then raise ValueError."""
        if self._popen is not None:
            if self._popen.poll() is None:
                raise ValueError(
                    "Cannot close a process while it is still running. "
                    "You should first call join() or terminate()."
                )
            self._popen.close()
            self._popen = None
            del self._sentinel
            _children_objects.pop(id(self), None)
        self._closed = True

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        assert isinstance(name, str), "name must be a string"
        self._name = name

    @property
    def daemon(self) -> bool:
        """Whether the process is daemonic (terminated when its parent exits)."""
        return self._config.get("daemon", False)

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        assert self._popen is None, "process has already started"
        self._config["daemon"] = daemonic

    @property
    def authkey(self) -> bytes:
        return self._config["authkey"]

    @authkey.setter
    def authkey(self, authkey: bytes) -> None:
        self._config["authkey"] = AuthenticationString(authkey)

    @property
    def exitcode(self) -> int | None:
        """Exit code: None while running, negative signal number if a signal ended it."""
        self._check_closed()
        if self._popen is None:
            return None
        return self._popen.poll()

    @property
    def ident(self) -> int | None:
        """The process id (None before start)."""
        self._check_closed()
        if self is _current_process:
            return os.getpid()
        return self._popen and self._popen.pid

    pid = ident

    @property
    def sentinel(self) -> int:
        """An fd that becomes ready (readable) when the process ends."""
        self._check_closed()
        try:
            return self._sentinel
        except AttributeError:
            raise ValueError("process not started") from None

    def __repr__(self) -> str:
        exitcode = None
        if self is _current_process:
            status = "started"
        elif self._closed:
            status = "closed"
        elif self._parent_pid != os.getpid():
            status = "unknown"
        elif self._popen is None:
            status = "initial"
        else:
            exitcode = self._popen.poll()
            status = "started" if exitcode is None else "stopped"
        info = [type(self).__name__, f"name={self._name!r}"]
        if self._popen is not None:
            info.append(f"pid={self._popen.pid}")
        info.append(f"parent={self._parent_pid}")
        info.append(status)
        if exitcode is not None:
            info.append(f"exitcode={_exitcode_to_name.get(exitcode, exitcode)}")
        if self.daemon:
            info.append("daemon")
        return "<{}>".format(" ".join(info))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_popen"] = None
        state.pop("_sentinel", None)
        return state

    def _bootstrap(self, parent_sentinel: int | None = None) -> int:
        """Run in the child: become the current process, run, and return the exit code."""
        global _current_process, _parent_process, _process_counter, _children_objects
        try:
            if self._start_method is not None:
                from . import context

                context._force_start_method(self._start_method)
            _process_counter = itertools.count(1)
            _children_objects = {}
            _close_stdin()
            old_process = _current_process
            _current_process = self
            _parent_process = _ParentProcess(self._parent_name, self._parent_pid, parent_sentinel)
            if threading._HAVE_THREAD_NATIVE_ID:  # type: ignore[attr-defined]
                threading.main_thread()._set_native_id()  # type: ignore[attr-defined]
            try:
                self._after_fork()
            finally:
                del old_process
            util.info("child process calling self.run()")
            from . import _stdlib_compat

            _stdlib_compat.use_parent_authkey()  # its target may have loaded the stdlib
            self.run()
            exitcode = 0
        except SystemExit as e:
            if e.code is None:
                exitcode = 0
            elif isinstance(e.code, int):
                exitcode = e.code
            else:
                sys.stderr.write(str(e.code) + "\n")
                exitcode = 1
                _note_error(f"SystemExit: {e.code}")
        except BaseException as e:
            exitcode = 1
            import traceback

            sys.stderr.write(f"Process {self.name}:\n")
            traceback.print_exc()
            _note_error(e)  # for the parent, which sees only the exit code otherwise
        finally:
            threading._shutdown()  # type: ignore[attr-defined]
            util.info("process exiting with exitcode %d", exitcode)
            util._flush_std_streams()
        try:
            util._exit_function()
            from . import _stdlib_compat

            _stdlib_compat.exit_in_child()
        finally:
            util._flush_std_streams()
        return exitcode

    @staticmethod
    def _after_fork() -> None:
        """Hook run in the child before ``run``; fork children also run after-fork hooks."""


def _note_error(error: BaseException | str) -> None:
    """Note the error this child exits with; it is sent to the parent as the child exits."""
    from ._spawn import _popen

    line = error if isinstance(error, str) else _popen.error_line(error)
    _popen.note_error(line, _popen.IN_RUN)


def _close_stdin() -> None:
    if sys.stdin is None:
        return
    try:
        sys.stdin.close()
    except (OSError, ValueError):
        pass
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        try:
            sys.stdin = open(fd, encoding="utf-8", closefd=False)
        except BaseException:
            os.close(fd)
            raise
    except (OSError, ValueError):
        pass


class _MainProcess(BaseProcess):
    """The Process object standing for the main (first) process."""

    def __init__(self) -> None:
        self._identity = ()
        self._name = "MainProcess"
        self._parent_pid = None  # type: ignore[assignment]
        self._popen = None
        self._closed = False
        self._config = {"authkey": AuthenticationString(os.urandom(32)), "semprefix": "/pp"}

    def close(self) -> None:
        pass


class _ParentProcess(BaseProcess):
    """The parent of this process, as seen from the child."""

    def __init__(self, name: str, pid: int, sentinel: int | None) -> None:
        self._identity = ()
        self._name = name
        self._pid = pid
        self._parent_pid = None  # type: ignore[assignment]
        self._popen = None
        self._closed = False
        self._sentinel = sentinel
        self._config = {}

    def is_alive(self) -> bool:
        from .connection import wait

        return self._sentinel is not None and not wait([self._sentinel], timeout=0)

    @property
    def ident(self) -> int:
        return self._pid

    pid = ident

    def join(self, timeout: float | None = None) -> None:
        from .connection import wait

        if self._sentinel is not None:
            wait([self._sentinel], timeout=timeout)


_current_process = _MainProcess()
del _MainProcess

_exitcode_to_name = {
    -signum: f"-{name}" for name, signum in signal.__dict__.items()
    if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(signum, int)
}
