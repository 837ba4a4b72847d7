"""Errors of the task engine, and how a worker's exception travels to the caller."""

from __future__ import annotations

import builtins
import signal

from ..context import ProcessError
from ..context import TimeoutError as _ProcessTimeoutError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .broken import BrokenProcessPool, WorkerLostError

__all__ = ["WorkerLostError", "TaskTimeoutError", "BrokenProcessPool", "RemoteTraceback",
           "describe_exit"]


def __getattr__(name: str) -> object:
    # WorkerLostError and BrokenProcessPool live in ``broken`` (see there why).
    if name in ("WorkerLostError", "BrokenProcessPool"):
        from . import broken

        return getattr(broken, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        import traceback

        self.exc = exc
        self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return _rebuild_exception, (self.exc, self.tb)


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback('\n"""\n' + tb + '"""')
    return exc


class UnpicklableError(ProcessError):
    """A task's exception or result could not be pickled to send it back to the parent."""


#: What a worker "did" when its exit status cannot be known: it was a child of a fork server
#: that died before it (the server reports its children's exit codes; nobody else can).
EXIT_UNKNOWN = "ended (exit status unknown: its fork server had died)"


def describe_exit(exitcode: int | str | None) -> str:
    """'died from SIGKILL' / 'exited with code 3' / 'died' (a str is already a description)."""
    if exitcode is None:
        return "died"
    if isinstance(exitcode, str):
        return exitcode
    if exitcode < 0:
        try:
            return f"died from {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"died from signal {-exitcode}"
    return f"exited with code {exitcode}"
