"""``Pool`` and ``ThreadPool``: the stdlib's process pool API on polyproc's engine.

Differences from the stdlib, all additions with compatible defaults:

* ``imap``/``imap_unordered`` default to adaptive chunking (``chunksize=None``); the input is
  read lazily and results not yet consumed are bounded, so memory stays flat on endless input.
* A worker that dies (SIGKILL, crash, out of memory) never hangs the pool: each task it held
  fails with ``WorkerLostError`` (or runs again with ``retries=N``) and a new worker starts.
* ``timeout=`` on ``map``/``imap``/``imap_unordered``/``starmap``/``apply_async`` (or
  ``task_timeout=`` on the pool) stops a worker running an overdue task and fails that task
  with ``TaskTimeoutError`` (a ``polyproc.TimeoutError`` and a builtin ``TimeoutError``).
* ``progress=True`` on ``map``/``imap``/``imap_unordered``/``starmap`` shows a tqdm bar.
* ``terminate()`` gives unfinished tasks an outcome (CancelledError) instead of leaving their
  results waiting forever; an exception from a worker carries its traceback as ``__cause__``.
* ``terminate()`` on the result of ``apply_async``/``map_async``/``imap``... stops that one
  call, even while it runs (its worker is killed and replaced; the other calls go on).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from . import util
from ._engine.errors import (
    MaybeEncodingError,
    RemoteTraceback,
    TaskTimeoutError,
    UnpicklableError,
)
from ._engine.jobs import Job
from ._engine.results import (
    ApplyResult,
    AsyncResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
    _ApplySink,
)
from ._exceptions import TimeoutError

__all__ = ["Pool", "ThreadPool", "AsyncResult", "ApplyResult", "MapResult", "IMapIterator",  # noqa: F822
           "IMapUnorderedIterator", "WorkerLostError", "TaskTimeoutError", "BrokenProcessPool",
           "ResultUnpicklingError", "UnpicklableError", "MaybeEncodingError", "RemoteTraceback",
           "TimeoutError"]

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"
_IMAP_WINDOW = 256  # base bound on tasks in flight + results not consumed, per imap call


class Pool:
    """A pool of worker processes (``multiprocessing.Pool``'s API; see the module doc).

    Extra keyword arguments: ``retries`` (times a task whose worker died is run again,
    default 0), ``task_timeout`` (seconds a task may run, default None: no limit).
    """

    _backend_name = "process"

    def __init__(self, processes: int | None = None, initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 context: Any = None, *, retries: int = 0,
                 task_timeout: float | None = None) -> None:
        if processes is None:
            processes = util._default_worker_count()
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None and (
                not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        _check_retries_timeout(retries, task_timeout)
        self._processes = processes
        self._retries = retries
        self._task_timeout = task_timeout
        if context is None:
            from .context import _default_context

            context = _default_context.get_context()
        self._ctx = context
        self._backend = self._make_backend(context, processes, initializer, tuple(initargs),
                                           maxtasksperchild)
        self._scheduler = self._backend.scheduler
        self._terminate_finalizer = util.Finalize(self, _terminate_backend, args=(self._backend,),
                                                  exitpriority=15)
        self._state = RUN  # last: __del__ of a half-built pool (bad arguments) does nothing

    def _make_backend(self, ctx: Any, processes: int, initializer: Any, initargs: tuple,
                      maxtasksperchild: int | None) -> Any:
        from ._backends.base import make_backend

        return make_backend(ctx, processes, initializer, initargs, maxtasksperchild)

    # ---------------------------------------------------------------- submitting

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _options(self, retries: int | None, timeout: float | None) -> tuple[int, float | None]:
        retries = self._retries if retries is None else retries
        timeout = self._task_timeout if timeout is None else timeout
        _check_retries_timeout(retries, timeout)
        return retries, timeout

    def apply(self, func: Callable[..., Any], args: Iterable[Any] = (),
              kwds: dict[str, Any] | None = None, **options: Any) -> Any:
        """Call ``func(*args, **kwds)`` in a worker and return its result."""
        return self.apply_async(func, args, kwds, **options).get()

    def apply_async(self, func: Callable[..., Any], args: Iterable[Any] = (),
                    kwds: dict[str, Any] | None = None,
                    callback: Callable[[Any], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None, *,
                    timeout: float | None = None, retries: int | None = None) -> AsyncResult:
        """Start ``func(*args, **kwds)`` in a worker; returns an ``AsyncResult``."""
        self._check_running()
        retries, timeout = self._options(retries, timeout)
        result = _ApplySink(callback, error_callback)
        job = Job("apply", func, tuple(args), result, length=1, star=True,
                  kwargs=dict(kwds) if kwds else None, single=True, retries=retries,
                  timeout=timeout)
        self._scheduler.submit(job)
        result._stop = (self._backend, job.id)
        return result

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in a worker, as ``Executor.submit``: a ``Future``.

        Not in the stdlib's Pool: it lets code written for executors take a Pool (Dask's
        ``pool=``, which adapts only the stdlib's own Pools, or ``loop.run_in_executor``).
        """
        self._check_running()
        from ._engine.results import FutureSink
        from .futures import _Future

        future = _Future()
        retries, timeout = self._options(None, None)
        self._scheduler.submit(Job("submit", fn, args, FutureSink(future), length=1, star=True,
                                   kwargs=kwargs or None, single=True, retries=retries,
                                   timeout=timeout))
        return future

    @property
    def _max_workers(self) -> int:
        # What executor users (Dask among them) read for the number of workers.
        return self._processes

    def _map_job(self, name: str, func: Callable[..., Any], iterable: Iterable[Any],
                 chunksize: int | None, star: bool, callback: Any, error_callback: Any,
                 retries: int | None, timeout: float | None, progress: Any) -> MapResult:
        self._check_running()
        retries, timeout = self._options(retries, timeout)
        _check_chunksize(chunksize)
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        length = len(iterable)  # type: ignore[arg-type]
        result = MapResult(length, callback, error_callback)
        job = Job(name, func, iterable, result, length=length, star=star,
                  chunksize=chunksize, retries=retries, timeout=timeout)
        _attach_progress(job, progress, length, name)
        self._scheduler.submit(job)
        result._stop = (self._backend, job.id)
        return result

    def map(self, func: Callable[[Any], Any], iterable: Iterable[Any],
            chunksize: int | None = None, *, timeout: float | None = None,
            retries: int | None = None, progress: Any = False) -> list[Any]:
        """``[func(x) for x in iterable]`` computed by the workers, in order."""
        result = self._map_job("map", func, iterable, chunksize, False, None, None, retries,
                               timeout, progress)
        return result.get()

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None, *, timeout: float | None = None,
                retries: int | None = None, progress: Any = False) -> list[Any]:
        """Like ``map`` with ``func(*args)`` for each ``args`` of the iterable."""
        result = self._map_job("starmap", func, iterable, chunksize, True, None, None, retries,
                               timeout, progress)
        return result.get()

    def map_async(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                  chunksize: int | None = None, callback: Any = None,
                  error_callback: Any = None, *, timeout: float | None = None,
                  retries: int | None = None, progress: Any = False) -> MapResult:
        """Asynchronous ``map``; returns a ``MapResult``."""
        return self._map_job("map", func, iterable, chunksize, False, callback, error_callback,
                             retries, timeout, progress)

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None, callback: Any = None,
                      error_callback: Any = None, *, timeout: float | None = None,
                      retries: int | None = None, progress: Any = False) -> MapResult:
        """Asynchronous ``starmap``; returns a ``MapResult``."""
        return self._map_job("starmap", func, iterable, chunksize, True, callback,
                             error_callback, retries, timeout, progress)

    def _imap(self, name: str, sink: Any, func: Callable[..., Any], iterable: Iterable[Any],
              chunksize: int | None, star: bool, retries: int | None,
              timeout: float | None, progress: Any) -> Any:
        self._check_running()
        retries, timeout = self._options(retries, timeout)
        _check_chunksize(chunksize)
        length = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        job = Job(name, func, iterable, sink, length=None, star=star,
                  chunksize=chunksize, retries=retries, timeout=timeout, window=_IMAP_WINDOW,
                  size_hint=length)
        _attach_progress(job, progress, length, name)
        self._scheduler.submit(job)
        sink._stop = (self._backend, job.id)
        return sink

    def imap(self, func: Callable[[Any], Any], iterable: Iterable[Any],
             chunksize: int | None = None, *, timeout: float | None = None,
             retries: int | None = None, progress: Any = False) -> IMapIterator:
        """Lazy ``map``: an iterator of results in input order (input read lazily)."""
        return self._imap("imap", IMapIterator(), func, iterable, chunksize, False, retries,
                          timeout, progress)

    def imap_unordered(self, func: Callable[[Any], Any], iterable: Iterable[Any],
                       chunksize: int | None = None, *, timeout: float | None = None,
                       retries: int | None = None,
                       progress: Any = False) -> IMapUnorderedIterator:
        """Like ``imap`` but results come in completion order."""
        return self._imap("imap_unordered", IMapUnorderedIterator(), func, iterable, chunksize,
                          False, retries, timeout, progress)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Accept no more tasks; workers exit once the submitted ones are done."""
        if self._state == RUN:
            self._state = CLOSE
            self._backend.close()

    def terminate(self) -> None:
        """Stop the workers now (unfinished tasks get a CancelledError outcome)."""
        self._state = TERMINATE
        self._terminate_finalizer()

    def join(self) -> None:
        """Wait for the workers to exit (after ``close`` or ``terminate``)."""
        if self._state == RUN:
            raise ValueError("Pool is still running")
        if self._state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        while not self._backend.join(0.25):  # bounded waits keep Ctrl-C responsive
            pass

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError(
            "pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} " \
               f"pool_size={self._processes}>"

    def __del__(self) -> None:
        if getattr(self, "_state", None) == RUN and not util.is_exiting():
            try:
                import warnings

                warnings.warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning,
                              stacklevel=2)
                self._backend.close()
            except Exception:  # e.g. at interpreter shutdown, when imports fail
                pass


class ThreadPool(Pool):
    """A ``Pool`` whose workers are threads of this process (nothing is pickled)."""

    _backend_name = "thread"

    def __init__(self, processes: int | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = ()) -> None:
        super().__init__(processes, initializer, initargs)

    def _options(self, retries: int | None, timeout: float | None) -> tuple[int, float | None]:
        if timeout is not None:
            raise ValueError("ThreadPool cannot stop a running thread, so it has no per-task "
                             "timeout; use a process Pool for timeout=")
        return super()._options(retries, timeout)

    def _make_backend(self, ctx: Any, processes: int, initializer: Any, initargs: tuple,
                      maxtasksperchild: int | None) -> Any:
        from ._backends.threads import ThreadBackend

        return ThreadBackend(processes, initializer, initargs)


def __getattr__(name: str) -> Any:
    # Re-exported on first use: they need concurrent.futures, which a pool need not import.
    if name in ("WorkerLostError", "BrokenProcessPool", "ResultUnpicklingError"):
        from ._engine import broken

        return getattr(broken, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _terminate_backend(backend: Any) -> None:
    backend.terminate()
    if threading.current_thread() is not backend.thread:
        backend.join(10)


def _check_chunksize(chunksize: int | None) -> None:
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize:n}")


def _check_retries_timeout(retries: int, timeout: float | None) -> None:
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, not {retries!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")


def _attach_progress(job: Job, progress: Any, total: int | None, name: str) -> None:
    if not progress:
        return
    from ._engine.progress import make_progress

    job.progress = make_progress(progress, total, name)
