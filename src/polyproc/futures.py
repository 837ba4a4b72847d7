"""``polyproc.futures``: ``concurrent.futures`` with a ProcessPoolExecutor on polyproc's engine.

``import polyproc.futures as concurrent_futures`` is a drop-in for process pools. The futures
are real ``concurrent.futures.Future`` objects, so ``wait``, ``as_completed`` and
``asyncio.wrap_future`` work. Differences from the stdlib executor, with compatible defaults:

* ``map`` reads its input lazily with a bounded window (the stdlib submits everything first)
  and chunks adaptively when ``chunksize`` is not given.
* A worker that dies fails only the tasks it held, with ``WorkerLostError`` (a
  ``BrokenExecutor``), instead of breaking the whole executor; ``retries=N`` runs such tasks
  again. ``task_timeout=`` stops a worker running an overdue task (``TaskTimeoutError``).
* ``max_tasks_per_child`` with a fork context raises ``ValueError``, as in the stdlib (a new
  worker would be forked from a process whose executor threads run); spawn is its default.
* An executor garbage collected without ``shutdown()`` finishes its submitted work, then its
  thread and workers end, without blocking the collection (as the stdlib's).
* Futures cancelled by ``shutdown(cancel_futures=True)`` count as done for ``wait`` and
  ``as_completed`` (the stdlib's never do: they wait forever, CPython issue 109934).
* ``future.terminate()`` stops one task, even a running one (its worker is killed and
  replaced); ``cancel()`` keeps the stdlib's meaning (only a task not started yet).
* Python 3.14's ``terminate_workers()`` and ``kill_workers()`` work on every version.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
    TimeoutError,
    as_completed,
    wait,
)
from concurrent.futures._base import CANCELLED as _CANCELLED
from concurrent.futures._base import CANCELLED_AND_NOTIFIED as _CANCELLED_AND_NOTIFIED
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import PENDING as _PENDING
from concurrent.futures._base import RUNNING as _RUNNING
from typing import Any

from . import util
from ._engine.errors import (
    BrokenProcessPool,
    ResultUnpicklingError,
    TaskTimeoutError,
    UnpicklableError,
    WorkerLostError,
)
from ._engine.jobs import Job
from ._engine.results import BoundedIMapIterator, FutureSink, IMapIterator, draining
from ._exceptions import TimeoutError as _ProcessTimeoutError

__all__ = [
    "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED", "CancelledError", "TimeoutError",
    "BrokenExecutor", "InvalidStateError", "Future", "Executor", "wait", "as_completed",
    "ProcessPoolExecutor", "ThreadPoolExecutor", "BrokenProcessPool", "WorkerLostError",
    "TaskTimeoutError", "UnpicklableError", "ResultUnpicklingError",
]

_MAP_WINDOW = 256


class ProcessPoolExecutor(Executor):
    """Runs calls in worker processes (``concurrent.futures.ProcessPoolExecutor``'s API)."""

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None, initargs: tuple = (), *,
                 max_tasks_per_child: int | None = None, retries: int = 0,
                 task_timeout: float | None = None) -> None:
        if max_workers is None:
            max_workers = util._default_worker_count()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, not {retries!r}")
        if task_timeout is not None and not task_timeout > 0:
            raise ValueError(f"task_timeout must be > 0 seconds, not {task_timeout!r}")
        if mp_context is None:
            from .context import _default_context

            if max_tasks_per_child is not None:
                mp_context = _default_context.get_context("spawn")  # the stdlib's default
            else:
                mp_context = _default_context.get_context()
        elif max_tasks_per_child is not None and _start_method(mp_context) == "fork":
            # As the stdlib: a replacement worker would be forked from this process while
            # the executor's dispatcher thread (and any of the program's) runs.
            raise ValueError(
                "max_tasks_per_child is incompatible with the 'fork' start method: a new "
                "worker would be forked from a process whose threads run, which is unsafe. "
                "Pass mp_context=polyproc.get_context('spawn') (or 'forkserver'), or no "
                "mp_context to get spawn.")
        self._mp_context = mp_context
        self._max_workers = max_workers
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks_per_child = max_tasks_per_child
        self._retries = retries
        self._task_timeout = task_timeout
        self._backend: Any = None
        self._demand: Callable[[], None] | None = None  # the backend's, if it starts workers
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._finalizer: util.Finalize | None = None

    def _ensure_backend(self) -> Any:
        backend = self._backend
        if backend is None:
            from ._backends.base import make_backend

            backend = make_backend(self._mp_context, self._max_workers, self._initializer,
                                   self._initargs, self._max_tasks_per_child,
                                   name="ProcessPoolWorker", on_demand=True)
            self._backend = backend
            self._demand = getattr(backend, "demand", None)
            self._finalizer = util.Finalize(self, _release_backend, args=(backend,),
                                            exitpriority=15)
        return backend

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; returns a ``concurrent.futures.Future``."""
        with self._shutdown_lock:
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if util.is_exiting():
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            backend = self._ensure_backend()
            if backend.scheduler.broken is not None:
                raise backend.scheduler.broken
            future: _StoppableFuture = _Future()
            job = Job("submit", fn, args, FutureSink(future), length=1, star=True,
                      kwargs=kwargs or None, single=True, retries=self._retries,
                      timeout=self._task_timeout)
            backend.scheduler.submit(job)
            future._stop = (backend, job.id)
        if self._demand is not None:
            self._demand()  # a worker it needs is started before submit returns (as the stdlib)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int | None = None,
            buffersize: int | None = None, progress: Any = False) -> Iterator[Any]:
        """``fn(*args)`` for ``args`` in ``zip(*iterables)``, yielded in order.

        ``timeout`` (seconds from this call) bounds the whole iteration, as in the stdlib.
        Input is read lazily; results not yet consumed are bounded (backpressure).
        ``buffersize`` (Python 3.14's, offered on every version) bounds exactly how many
        tasks may be running or waiting to be consumed; the input is read no further ahead.
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int) or isinstance(buffersize, bool):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._shutdown_lock:
            if self._shutdown_thread:
                raise RuntimeError("cannot schedule new futures after shutdown")
            backend = self._ensure_backend()
            it = IMapIterator() if buffersize is None else BoundedIMapIterator()
            total = None
            if len(iterables) == 1:
                # One iterable: its items are the arguments (no 1-tuples to make and pickle).
                source, star = iterables[0], False
                if hasattr(iterables[0], "__len__"):
                    total = len(iterables[0])  # type: ignore[arg-type]
            else:
                source, star = zip(*iterables, strict=False), True
            job = Job("map", fn, source, it, star=star, chunksize=chunksize,
                      retries=self._retries, timeout=self._task_timeout,
                      window=_MAP_WINDOW if buffersize is None else buffersize,
                      size_hint=total, strict_window=buffersize is not None)
            if progress:
                from ._engine.progress import make_progress

                job.progress = make_progress(progress, total, "map")
            backend.scheduler.submit(job)
        return _result_iterator(it, deadline,
                                None if buffersize is None else it.handed_out)  # type: ignore[attr-defined]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``cancel_futures`` cancel what has not started."""
        with self._shutdown_lock:
            self._shutdown_thread = True
            backend = self._backend
        if backend is None:
            return
        if cancel_futures:
            cancel = getattr(backend, "cancel_unstarted", None)
            cancel() if cancel is not None else backend.scheduler.cancel_pending()
        backend.close()
        if wait:
            while not backend.join(0.25):
                pass

    def terminate_workers(self) -> None:
        """Stop every worker now with SIGTERM (Python 3.14's, offered on every version).

        As ``shutdown(wait=False, cancel_futures=True)``, then each worker is sent SIGTERM:
        futures not started are cancelled, running ones fail with ``WorkerLostError`` (a
        ``BrokenProcessPool``), no worker is started again and ``submit`` raises
        ``RuntimeError``. ``shutdown()`` or leaving a ``with`` block then waits for the
        workers to exit (a worker that ignores SIGTERM is killed after 5 s).
        """
        self._stop_workers(signal.SIGTERM, "terminate_workers()")

    def kill_workers(self) -> None:
        """As ``terminate_workers()``, with SIGKILL (Python 3.14's, on every version)."""
        self._stop_workers(signal.SIGKILL, "kill_workers()")

    def _stop_workers(self, sig: int, why: str) -> None:
        backend = self._backend
        if backend is not None and not hasattr(backend, "kill_workers"):
            raise NotImplementedError(
                f"{why} is not supported by this executor's backend "
                f"({type(backend).__name__}): its workers are not the executor's to kill. "
                "Use shutdown(cancel_futures=True), and task_timeout= to bound running tasks.")
        self.shutdown(wait=False, cancel_futures=True)
        backend = self._backend  # no new one can be made any more
        if backend is not None:
            backend.kill_workers(sig, why)

    @property
    def _processes(self) -> dict[int, Any]:
        """Worker processes by pid (the stdlib's private attribute, which tests often use)."""
        if self._backend is None:
            return {}
        workers = getattr(self._backend, "workers", {})
        return {w.pid: w.proc for w in list(workers.values())}


# The C RLock: final in the stubs (their versions also disagree on its name), not at run time.
_RLock: Any = _thread.RLock


class _FutureCondition(_RLock):
    """A Future's condition, made cheaply: the RLock it locks with, plus a real
    ``threading.Condition`` on that lock made only when a thread waits. A busy executor's
    futures are mostly done before anybody waits on them, and ``threading.Condition()`` is
    the larger part of a future (ten objects for the garbage collector to track)."""

    __slots__ = ("_cond",)

    def __init__(self) -> None:
        self._cond: threading.Condition | None = None

    # Future calls these with the lock held (as threading.Condition requires).
    def wait(self, timeout: float | None = None) -> bool:
        cond = self._cond
        if cond is None:
            cond = self._cond = threading.Condition(self)
        return cond.wait(timeout)

    def notify(self, n: int = 1) -> None:
        if self._cond is not None:
            self._cond.notify(n)

    def notify_all(self) -> None:
        if self._cond is not None:
            self._cond.notify_all()


class _StoppableFuture(Future):
    """A ``concurrent.futures.Future`` of ``ProcessPoolExecutor.submit``, with ``terminate``."""

    #: ``(backend, job id)`` of its call, set by ``submit``.
    _stop: tuple[Any, int] | None = None

    def terminate(self) -> bool:
        """Stop this call now, even while it runs: its future ends CANCELLED.

        Not started yet: it is cancelled (as ``cancel()``). Running: the worker running it is
        killed (SIGKILL, as ``task_timeout`` does) and replaced, the other tasks that worker
        held run again elsewhere, and the future moves from RUNNING to CANCELLED
        (``cancelled()`` is True, ``result()`` and ``exception()`` raise ``CancelledError``,
        ``wait`` and ``as_completed`` count it as done) once the worker is gone. True if it
        was (or is being) stopped or was cancelled already; False if it had finished.
        Executors on a Dask context raise ``NotImplementedError``.
        """
        with self._condition:
            if self._state in (_CANCELLED, _CANCELLED_AND_NOTIFIED):
                return True
            if self._state == _FINISHED:
                return False
        stop = self._stop
        return False if stop is None else stop[0].stop_job(stop[1])

    def _cancel_running(self) -> bool:
        """RUNNING -> CANCELLED_AND_NOTIFIED: the pool stopped its task (``terminate()``)."""
        with self._condition:
            if self._state != _RUNNING:
                return False
            self._state = _CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]  # Future's, not in the stubs
        return True


class _Future(_StoppableFuture):
    """A ``_StoppableFuture`` (the stdlib Future's methods, state and callbacks) whose
    condition is a ``_FutureCondition``."""

    def __init__(self) -> None:
        # Future.__init__'s fields, with the lighter condition (checked at import below).
        self._condition = _FutureCondition()
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []


for _cls in (_StoppableFuture, _Future):
    _cls.__name__ = _cls.__qualname__ = "Future"  # reprs read like the stdlib's
if set(vars(Future())) != set(vars(_Future())):  # another Python's Future has other fields
    _Future = _StoppableFuture  # type: ignore[misc, assignment]


def _result_iterator(it: IMapIterator, deadline: float | None,
                     handed_out: Callable[[], None] | None = None) -> Iterator[Any]:
    """``map``'s results in order; ``handed_out`` (buffersize) is told of each one yielded."""
    next_chunk = it._next_chunk
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                values, errors = next_chunk(remaining)
            except StopIteration:
                return
            except _ProcessTimeoutError:
                raise TimeoutError from None
            # Each value is let go as it is handed out: a result the caller drops is freed.
            if errors is None and handed_out is None:
                yield from draining(values)
                continue
            values.reverse()
            for pos in range(len(values)):
                if errors and pos in errors:
                    raise errors[pos]
                if handed_out is not None:
                    handed_out()
                yield values.pop()
    finally:
        it.close()


def _start_method(ctx: Any) -> str | None:
    try:
        return ctx.get_start_method(allow_none=False)
    except TypeError:  # a context-like object without allow_none
        return ctx.get_start_method()


#: Backends of executors collected without ``shutdown()``: their dispatchers finish the work
#: submitted and stop; the process waits for them at exit (as the stdlib joins its executors'
#: threads). No lock: a collection can run these finalizers in a thread that holds any lock.
_released: weakref.WeakSet[Any] = weakref.WeakSet()
_exit_join_pid: int | None = None  # the process whose exit finalizer joins _released


def _release_backend(backend: Any) -> None:
    """An executor's finalizer: it was garbage collected, or the process exits, without
    ``shutdown()``. The work submitted still runs (its futures get their outcomes), then the
    dispatcher stops the workers and ends. A collection never waits for that: it can happen
    in any thread at any allocation, the dispatcher's own included. At exit, waits up to 10 s.
    """
    global _exit_join_pid
    backend.close()
    if util.is_exiting():
        if threading.current_thread() is not backend.thread:
            backend.join(10)
        return
    if not backend.thread.is_alive():  # shut down already
        return
    _released.add(backend)
    if _exit_join_pid != os.getpid():  # a forked child starts without its parent's finalizers
        _exit_join_pid = os.getpid()  # (two threads racing here register two: harmless)
        util.Finalize(None, _join_released, exitpriority=15)


def _join_released() -> None:
    deadline = time.monotonic() + 10
    for backend in list(_released):
        if threading.current_thread() is not backend.thread:
            backend.join(max(0.0, deadline - time.monotonic()))
