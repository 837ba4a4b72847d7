"""A joblib backend on polyproc's engine: ``with joblib.parallel_config(backend="polyproc")``.

Importing this module registers the backend under the name ``"polyproc"`` (``register()``
does it again, e.g. under another name). Then joblib, and scikit-learn through it, run their
parallel loops on a ``polyproc.futures.ProcessPoolExecutor``::

    import joblib
    import polyproc.joblib  # noqa: F401  (registers "polyproc")

    with joblib.parallel_config(backend="polyproc", n_jobs=2):
        print(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(5)))

Backend options (``parallel_config(backend="polyproc", ...)`` keywords):

* ``start_method``: ``"forkserver"`` by default (workers forked from a clean server, so no
  thread or OpenMP state of the caller is inherited, as loky does), or ``"fork"``, ``"spawn"``.
* ``retries``: times a task whose worker died runs again (polyproc's retries).
* ``task_timeout``: seconds a task may run before its worker is stopped and the task fails
  with ``polyproc.TaskTimeoutError``.
* ``inner_max_num_threads``: threads each worker's BLAS/OpenMP may use (default: the CPUs
  divided by the workers, as joblib's process backends do).

The workers are reused by later ``Parallel`` calls with the same settings, as loky's are.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import joblib
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

__all__ = ["PolyprocBackend", "register"]

DEFAULT_START_METHOD = "forkserver"
#: Options joblib passes to every process backend (memmapping of large arrays, which polyproc
#: does not need: its large buffers travel through shared memory anyway). Accepted, unused.
_JOBLIB_OPTIONS = frozenset({"max_nbytes", "mmap_mode", "temp_folder", "verbose", "context",
                             "idle_worker_timeout"})

_shared_lock = threading.Lock()
_shared: dict[str, Any] = {"key": None, "executor": None}


def _limit_threads(env: dict[str, str], n_threads: int) -> None:
    """Worker initializer: keep BLAS/OpenMP thread pools to this worker's share of CPUs."""
    os.environ.update(env)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(n_threads)


def _executor(n_jobs: int, start_method: str, retries: int, task_timeout: float | None,
              env: dict[str, str], n_threads: int) -> Any:
    """The shared executor for these settings (made, or remade if the settings changed)."""
    import polyproc
    import polyproc.futures

    key = (n_jobs, start_method, retries, task_timeout, tuple(sorted(env.items())))
    with _shared_lock:
        executor = _shared["executor"]
        if executor is not None and _shared["key"] == key and not executor._shutdown_thread:
            return executor
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        executor = polyproc.futures.ProcessPoolExecutor(
            n_jobs, mp_context=polyproc.get_context(start_method), initializer=_limit_threads,
            initargs=(env, n_threads), retries=retries, task_timeout=task_timeout)
        _shared.update(key=key, executor=executor)
        return executor


class PolyprocBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's process backend interface on ``polyproc.futures.ProcessPoolExecutor``."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True

    def __init__(self, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, **backend_kwargs: Any) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self._executor: Any = None

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                  require: Any = None, **backend_kwargs: Any) -> int:
        """Get the workers ready (reusing the shared ones when the settings match)."""
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        options = {**self.backend_kwargs, **backend_kwargs}
        unknown = set(options) - {"start_method", "retries", "task_timeout"} - _JOBLIB_OPTIONS
        if unknown:
            raise TypeError(f"unknown option(s) of the polyproc joblib backend: "
                            f"{', '.join(sorted(unknown))}; it takes start_method, retries "
                            "and task_timeout")
        env = self._prepare_worker_env(n_jobs=n_jobs)
        n_threads = int(env.get("OMP_NUM_THREADS", "1"))
        self._executor = _executor(n_jobs, options.get("start_method", DEFAULT_START_METHOD),
                                   options.get("retries", 0), options.get("task_timeout"),
                                   env, n_threads)
        self.parallel = parallel
        return n_jobs

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The workers a call gets: 1 inside a pool worker (daemons cannot have children)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        import polyproc

        if polyproc.current_process().daemon:
            if n_jobs != 1:
                import warnings

                warnings.warn("polyproc-backed parallel loops cannot be called inside a "
                              "pool worker (a daemon process); setting n_jobs=1",
                              stacklevel=3)
            return 1
        if not (self.in_main_thread() or self.nesting_level == 0):
            return 1
        if n_jobs < 0:
            from polyproc import util

            n_jobs = max(util._default_worker_count() + 1 + n_jobs, 1)
        return n_jobs

    def submit(self, func: Any, callback: Any = None) -> Any:
        """Run ``func()`` (a joblib batch of calls) on a worker; returns its future."""
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Any) -> Any:
        return future.result()

    def terminate(self) -> None:
        # The workers stay up for the next Parallel call (as loky's do); they stop at exit.
        self._executor = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: stop what still runs, and get fresh workers if asked."""
        executor, self._executor = self._executor, None
        if executor is not None:
            with _shared_lock:
                if _shared["executor"] is executor:
                    _shared.update(key=None, executor=None)
            executor.shutdown(wait=False, cancel_futures=True)
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel,
                           **self.parallel._backend_kwargs)


def register(name: str = "polyproc") -> None:
    """Register the backend with joblib under ``name`` (done once on import as "polyproc")."""
    joblib.register_parallel_backend(name, PolyprocBackend)


register()
