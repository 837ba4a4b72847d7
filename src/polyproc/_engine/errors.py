"""Errors of the task engine, and how a worker's exception travels to the caller."""

from __future__ import annotations

import builtins
import signal
import traceback
from concurrent.futures import BrokenExecutor

from ..context import ProcessError
from ..context import TimeoutError as _ProcessTimeoutError

__all__ = ["WorkerLostError", "TaskTimeoutError", "BrokenProcessPool", "RemoteTraceback",
           "describe_exit"]


class WorkerLostError(ProcessError, BrokenExecutor):
    """A worker process died (killed, crashed, out of memory) while it held this task.

    The pool itself keeps working: it replaces the worker and runs the other tasks.
    Ask for ``retries=N`` to run such a task again on another worker.
    """


class BrokenProcessPool(ProcessError, BrokenExecutor):
    """The pool cannot run tasks any more (its initializer fails, or workers die on start)."""


class TaskTimeoutError(_ProcessTimeoutError, builtins.TimeoutError):
    """A task ran longer than its ``timeout``; its worker was stopped and replaced."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker (set as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class _ExceptionWithTraceback:
    """Carries a worker's exception and its formatted traceback to the parent."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return _rebuild_exception, (self.exc, self.tb)


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback('\n"""\n' + tb + '"""')
    return exc


class UnpicklableError(ProcessError):
    """A task's exception or result could not be pickled to send it back to the parent."""


def describe_exit(exitcode: int | None) -> str:
    """'died from SIGKILL' / 'exited with code 3' / 'died'."""
    if exitcode is None:
        return "died"
    if exitcode < 0:
        try:
            return f"died from {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"died from signal {-exitcode}"
    return f"exited with code {exitcode}"
