"""Errors of the task engine, and how a worker's exception travels to the caller."""

from __future__ import annotations

import builtins
import pickle
import signal

from .._exceptions import ProcessError
from .._exceptions import TimeoutError as _ProcessTimeoutError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .broken import BrokenProcessPool, ResultUnpicklingError, WorkerLostError

__all__ = ["WorkerLostError", "TaskTimeoutError", "BrokenProcessPool", "RemoteTraceback",
           "UnpicklableError", "MaybeEncodingError", "ResultUnpicklingError", "describe_exit"]


def __getattr__(name: str) -> object:
    # WorkerLostError and BrokenProcessPool live in ``broken`` (see there why).
    if name in ("WorkerLostError", "BrokenProcessPool", "ResultUnpicklingError"):
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
        try:
            self.tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException as e:  # formatting must never cost the task its outcome
            self.tb = (f"{type(exc).__qualname__} (its traceback could not be formatted: "
                       f"{type(e).__name__})\n")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exception, (self.exc, self.tb)


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = RemoteTraceback('\n"""\n' + tb + '"""')
    return exc


class UnpicklableError(ProcessError, pickle.PicklingError):
    """A task's result or exception could not be pickled to send it back to the parent.

    Only that task fails; the pool goes on. A ``pickle.PicklingError``, as the stdlib's
    executor reports such a result (``except pickle.PicklingError`` keeps working).
    """


class MaybeEncodingError(UnpicklableError):
    """A task's result (or exception) could not be pickled in the worker to send it back.

    The stdlib ``multiprocessing.pool``'s name for it, with its attributes: ``exc`` and
    ``value`` are the ``repr`` of the pickling error and of what could not be pickled. Also
    an ``UnpicklableError`` and so a ``pickle.PicklingError`` (what the executor's callers
    catch). Arguments that cannot be sent to a worker fail with a plain ``UnpicklableError``.
    """

    def __init__(self, message: str, exc: str | None = None, value: str | None = None) -> None:
        super().__init__(message)
        self.exc = exc
        self.value = value


# Shown (and pickled) under the names users import them by, as the stdlib shows its own.
UnpicklableError.__module__ = "polyproc"
MaybeEncodingError.__module__ = "polyproc.pool"
RemoteTraceback.__module__ = "polyproc.pool"


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
