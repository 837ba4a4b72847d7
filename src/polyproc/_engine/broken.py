"""The engine's errors that are also ``concurrent.futures.BrokenExecutor``s.

Kept apart from ``errors`` because ``concurrent.futures`` imports ``logging``: a pool that
never fails never pays for either (``errors`` hands these out on first use).
"""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor

from .._exceptions import ProcessError
from .errors import UnpicklableError

__all__ = ["WorkerLostError", "BrokenProcessPool", "ResultUnpicklingError"]


class BrokenProcessPool(ProcessError, BrokenExecutor):
    """The pool cannot run tasks any more (its initializer fails, or workers die on start)."""


class WorkerLostError(BrokenProcessPool):
    """A worker process died (killed, crashed, out of memory) while it held this task.

    The pool itself keeps working: it replaces the worker and runs the other tasks.
    Ask for ``retries=N`` to run such a task again on another worker. A
    ``BrokenProcessPool``, as the stdlib's executor reports a dying worker (there the whole
    pool breaks; here only this task fails).
    """


class ResultUnpicklingError(BrokenProcessPool, UnpicklableError, pickle.UnpicklingError):
    """A task's result or exception was sent but cannot be rebuilt in the parent.

    Only that task fails and the pool goes on; the class is a ``BrokenProcessPool`` because
    that is what the stdlib's executor raises then (it breaks the whole pool), and an
    ``UnpicklableError`` like every outcome that could not make the trip.
    """


# Shown (and pickled) under the names users import them by.
WorkerLostError.__module__ = BrokenProcessPool.__module__ = "polyproc"
ResultUnpicklingError.__module__ = "polyproc"
