"""Process-lifetime utilities: finalizers, after-fork hooks, logging and exit handling.

Mirrors the documented parts of ``multiprocessing.util`` (``Finalize``, ``register_after_fork``,
``get_logger``, ``log_to_stderr``) plus the exit function every polyproc process runs.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import threading
import weakref

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Sequence
    from typing import Any

__all__ = [
    "sub_debug", "debug", "info", "sub_warning", "get_logger", "log_to_stderr",
    "get_temp_dir", "register_after_fork", "is_exiting", "Finalize", "ForkAwareThreadLock",
    "ForkAwareLocal", "close_all_fds_except", "SUBDEBUG", "SUBWARNING",
]

NOTSET = 0
SUBDEBUG = 5
DEBUG = 10
INFO = 20
SUBWARNING = 25

LOGGER_NAME = "polyproc"
DEFAULT_LOGGING_FORMAT = "[%(levelname)s/%(processName)s] %(message)s"

_logger: logging.Logger | None = None
_log_to_stderr = False


def sub_debug(msg: str, *args: Any) -> None:
    if _logger:
        _logger.log(SUBDEBUG, msg, *args, stacklevel=2)


def debug(msg: str, *args: Any) -> None:
    if _logger:
        _logger.log(DEBUG, msg, *args, stacklevel=2)


def info(msg: str, *args: Any) -> None:
    if _logger:
        _logger.log(INFO, msg, *args, stacklevel=2)


def sub_warning(msg: str, *args: Any) -> None:
    if _logger:
        _logger.log(SUBWARNING, msg, *args, stacklevel=2)


def get_logger() -> logging.Logger:
    """Return the logger used by polyproc, creating it on first use."""
    global _logger
    import logging

    with logging._lock:  # type: ignore[attr-defined]
        if not _logger:
            _logger = logging.getLogger(LOGGER_NAME)
            _logger.propagate = False
            logging.addLevelName(SUBDEBUG, "SUBDEBUG")
            logging.addLevelName(SUBWARNING, "SUBWARNING")
    return _logger


def log_to_stderr(level: int | str | None = None) -> logging.Logger:
    """Make polyproc's logger print to stderr (and do so in children too)."""
    global _log_to_stderr
    import logging

    logger = get_logger()
    formatter = logging.Formatter(DEFAULT_LOGGING_FORMAT)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    if level:
        logger.setLevel(level)
    _log_to_stderr = True
    return logger


def _logging_config() -> tuple[bool, int | None]:
    """What a child needs to reproduce this process's logging setup: whether polyproc logs
    to stderr, and its logger's *effective* level (a logger left at NOTSET follows the root
    logger's level here; the child gets that level, as the stdlib's spawn children do)."""
    return _log_to_stderr, (_logger.getEffectiveLevel() if _logger else None)


def _apply_logging_config(config: tuple[bool, int | None]) -> None:
    to_stderr, level = config
    if to_stderr:
        log_to_stderr()
    if level is not None:
        get_logger().setLevel(level)


# ---------------------------------------------------------------- platform

#: Whether AF_UNIX addresses may be abstract (a name starting with a NUL byte, no file): Linux.
abstract_sockets_supported: bool = sys.platform == "linux" or hasattr(sys, "getandroidapilevel")


# ---------------------------------------------------------------- temp dir

_temp_dir: str | None = None


def get_temp_dir() -> str:
    """A private (0700) temporary directory for this process, removed when it exits."""
    global _temp_dir
    import shutil
    import tempfile

    if _temp_dir is None or not os.path.isdir(_temp_dir):
        _temp_dir = tempfile.mkdtemp(prefix="polyproc-")
        Finalize(None, shutil.rmtree, args=(_temp_dir, True), exitpriority=-100)
    return _temp_dir


# ---------------------------------------------------------------- after-fork hooks

_afterfork_registry: weakref.WeakValueDictionary[tuple[int, int, Callable[..., Any]], Any] = (
    weakref.WeakValueDictionary()
)
_afterfork_counter = itertools.count()


def register_after_fork(obj: Any, func: Callable[[Any], None]) -> None:
    """Call ``func(obj)`` in a child created by fork, as long as ``obj`` is alive."""
    _afterfork_registry[(next(_afterfork_counter), id(obj), func)] = obj


def _run_after_forkers() -> None:
    items = sorted(_afterfork_registry.items(), key=lambda kv: kv[0][0])
    for (_index, _ident, func), obj in items:
        try:
            func(obj)
        except Exception as e:
            info("after forker raised exception %s", e)


# ---------------------------------------------------------------- finalizers

_finalizer_registry: dict[tuple[int | None, int], Finalize] = {}
_finalizer_counter = itertools.count()


class Finalize:
    """Call ``callback(*args, **kwargs)`` once: when ``obj`` is garbage collected, when the
    finalizer is called, or at process exit (if ``exitpriority`` is not None; higher first)."""

    def __init__(
        self,
        obj: Any,
        callback: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        exitpriority: int | None = None,
    ) -> None:
        if exitpriority is not None and not isinstance(exitpriority, int):
            raise TypeError(f"Exitpriority ({exitpriority!r}) must be None or int, not {type(exitpriority)}")
        if obj is not None:
            self._weakref: weakref.ref[Any] | None = weakref.ref(obj, self)
        elif exitpriority is None:
            raise ValueError("Without object, exitpriority cannot be None")
        else:
            self._weakref = None
        self._callback: Callable[..., Any] | None = callback
        self._args: Sequence[Any] | None = args
        self._kwargs: dict[str, Any] | None = kwargs or {}
        self._key: tuple[int | None, int] | None = (exitpriority, next(_finalizer_counter))
        self._pid = os.getpid()
        _finalizer_registry[self._key] = self

    def __call__(self, wr: Any = None, _registry: dict = _finalizer_registry) -> Any:
        # The registry is bound as a default: at interpreter teardown the module global may
        # already be None when a late weakref callback runs.
        try:
            del _registry[self._key]  # a key of None (already run or cancelled): KeyError
        except KeyError:
            return None
        if self._pid != os.getpid():
            res = None  # a forked child must not run its parent's finalizers
        else:
            callback, args, kwargs = self._callback, self._args, self._kwargs
            # Cleared only below, after the registry entry (removed once) is gone.
            assert callback is not None and args is not None and kwargs is not None
            res = callback(*args, **kwargs)
        self._weakref = self._callback = self._args = self._kwargs = self._key = None
        return res

    def cancel(self) -> None:
        """Cancel the finalizer without running it."""
        try:
            del _finalizer_registry[self._key]  # type: ignore[arg-type]  # None: KeyError
        except KeyError:
            pass
        else:
            self._weakref = self._callback = self._args = self._kwargs = self._key = None

    def still_active(self) -> bool:
        return self._key in _finalizer_registry

    def __repr__(self) -> str:
        obj = self._weakref() if self._weakref else None
        if self._key is None:
            return "<Finalize object, dead>"
        name = getattr(self._callback, "__qualname__", repr(self._callback))
        x = f"<Finalize object, callback={name}"
        if obj is not None:
            x += f", obj={type(obj).__name__}"
        if self._key[0] is not None:
            x += f", exitpriority={self._key[0]}"
        return x + ">"


def _run_finalizers(minpriority: int | None = None) -> None:
    """Run finalizers whose exit priority is >= minpriority (all with a priority if None)."""
    if not _finalizer_registry:
        return
    if minpriority is None:
        def want(key: tuple[int | None, int]) -> bool:
            return key[0] is not None
    else:
        def want(key: tuple[int | None, int]) -> bool:
            return key[0] is not None and key[0] >= minpriority
    keys = sorted((k for k in list(_finalizer_registry) if want(k)), reverse=True)
    for key in keys:
        finalizer = _finalizer_registry.get(key)
        if finalizer is None:
            continue
        try:
            finalizer()
        except Exception:
            import traceback
            traceback.print_exc()
    if minpriority is None:
        _finalizer_registry.clear()


def _reset_finalizers_after_fork() -> None:
    _finalizer_registry.clear()


# ---------------------------------------------------------------- exit

_exiting = False


def is_exiting() -> bool:
    """True while this process runs its exit handlers."""
    return _exiting


def _exit_function() -> None:
    """Run at exit of every polyproc process: finalizers, then stop daemonic children and
    join the others (the stdlib's documented behaviour)."""
    global _exiting
    if _exiting:
        return
    _exiting = True
    from . import process

    _run_finalizers(0)
    if process.current_process() is not None:
        for p in process.active_children():
            if p.daemon:
                info("calling terminate() for daemon %s", p.name)
                p._popen.terminate()
        for p in process.active_children():
            info("calling join() for process %s", p.name)
            p.join()
    _run_finalizers()


atexit.register(_exit_function)


def _reset_exit_state_in_child() -> None:
    global _exiting
    _exiting = False


def _cleanup_tests() -> None:
    """What the stdlib's test suites call once a test module is done (their
    ``tearDownModule``): reap finished children, stop this process's fork server (the next
    forkserver start makes a new one) and collect garbage.

    Unlike the stdlib's, it does not run the finalizers that have an exit priority: those of
    objects still alive (named semaphores, the fd sharer, the temporary directory) must run
    only at exit, since the process goes on.
    """
    import gc

    from . import process
    from ._spawn import forkserver

    process._cleanup()
    forkserver._forkserver._stop()
    gc.collect()


# ---------------------------------------------------------------- fork-aware helpers

class ForkAwareThreadLock:
    """A threading.Lock that is replaced by a fresh one in a forked child."""

    def __init__(self) -> None:
        self._at_fork_reinit()
        register_after_fork(self, ForkAwareThreadLock._at_fork_reinit)

    def _at_fork_reinit(self) -> None:
        self._lock = threading.Lock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: Any) -> None:
        return self._lock.__exit__(*args)


class ForkAwareLocal(threading.local):
    """A threading.local whose contents are cleared in a forked child."""

    def __init__(self) -> None:
        register_after_fork(self, lambda obj: obj.__dict__.clear())

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return type(self), ()


# ---------------------------------------------------------------- fds

def _default_worker_count() -> int:
    """Workers a pool or executor starts by default: the running Python's own choice.

    ``os.process_cpu_count()`` where the interpreter has it (3.13+: the CPUs this process may
    use, and ``PYTHON_CPU_COUNT``), else ``os.cpu_count()``, as each version's stdlib does.
    """
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


def close_fds(*fds: int) -> None:
    """Close each fd, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def close_all_fds_except(keep: list[int] | tuple[int, ...]) -> None:
    """Close every fd except those in ``keep`` and the standard streams' fds."""
    keep = sorted(set(keep) | {0, 1, 2})
    start = 0
    for fd in keep + [os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 4096]:
        if fd > start:
            os.closerange(start, fd)
        start = fd + 1


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError):
            pass
