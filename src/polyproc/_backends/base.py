"""What a backend is: the interface the faces and the scheduler rely on, and the one chooser.

A backend does the I/O of a pool: it runs the batches its ``Scheduler`` hands out on some
workers (processes, threads, a Dask cluster) and reports what became of them
(``complete``, ``worker_lost``, ...); the scheduler decides, the faces (``pool.py``,
``futures.py``) build jobs and submit them to ``backend.scheduler``. ``Backend`` lists what
every backend provides, so a new one (or a change to one) cannot drift from what the faces
use; ``tests/test_scheduler.py`` checks that ``LocalBackend``, ``ThreadBackend`` and
``DaskBackend`` provide it. ``make_backend`` picks the backend of a context.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._engine.scheduler import Scheduler


@runtime_checkable
class Backend(Protocol):
    """The I/O side of a pool or executor, as the faces use it.

    Construction starts the backend (its workers and its ``thread``); the faces never touch
    the workers, only these members.
    """

    #: The pool's scheduler: the faces submit jobs to it; its ``wakeup`` is this ``wakeup``.
    scheduler: Scheduler
    #: The backend's own thread (dispatcher, driver or reaper): it ends once the backend has
    #: stopped and every task has its outcome. A finalizer running in it must not join it.
    thread: threading.Thread

    def wakeup(self) -> None:
        """Look at the scheduler again (new work, a consumed result); any thread, cheap."""

    def close(self) -> None:
        """Run every task submitted so far, then stop (``Pool.close``, ``shutdown``)."""

    def terminate(self) -> None:
        """Stop now; tasks without an outcome yet are cancelled (``Pool.terminate``)."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for ``thread`` to end; True if it has."""
        ...

    def worker_pids(self) -> list[int]:
        """The pids of the worker processes (empty for threads)."""
        ...

    def stop_job(self, job_id: int) -> bool:
        """``terminate()`` of one future or result: cancel the job's tasks and stop the
        workers running them (any thread); True if the job had not ended yet. A backend
        whose workers are not its own raises ``NotImplementedError`` saying what to use."""
        ...


def make_backend(ctx: Any, processes: int, initializer: Any = None, initargs: tuple = (),
                 maxtasks: int | None = None, name: str = "PoolWorker",
                 on_demand: bool = False) -> Backend:
    """The backend for a pool or executor of context ``ctx``: the context's own if its class
    has one (``_backend_factory``, e.g. the dask context; looked up on the class, so any
    other object with a ``Process``, say a mock, is a local context), else local worker
    processes started with ``ctx``'s start method and named ``name``-N (``on_demand``: as
    work needs them, the executor's rule)."""
    if getattr(type(ctx), "_backend_factory", None) is not None:
        return ctx._backend_factory(processes, initializer, initargs, maxtasks, name)
    from .local import LocalBackend

    return LocalBackend(ctx, processes, initializer, initargs, maxtasks, name=name,
                        on_demand=on_demand)
