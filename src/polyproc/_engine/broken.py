"""The engine's errors that are also ``concurrent.futures.BrokenExecutor``s.

Kept apart from ``errors`` because ``concurrent.futures`` imports ``logging``: a pool that
never fails never pays for either (``errors`` hands these out on first use).
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor

from ..context import ProcessError

__all__ = ["WorkerLostError", "BrokenProcessPool"]


class WorkerLostError(ProcessError, BrokenExecutor):
    """A worker process died (killed, crashed, out of memory) while it held this task.

    The pool itself keeps working: it replaces the worker and runs the other tasks.
    Ask for ``retries=N`` to run such a task again on another worker.
    """


class BrokenProcessPool(ProcessError, BrokenExecutor):
    """The pool cannot run tasks any more (its initializer fails, or workers die on start)."""


# Shown (and pickled) under the names users import them by.
WorkerLostError.__module__ = BrokenProcessPool.__module__ = "polyproc"
