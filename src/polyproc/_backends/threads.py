"""The thread backend (``ThreadPool``): worker threads that run batches directly.

Nothing is pickled: threads take the job's function and arguments as they are. Per-task
timeouts cannot stop a thread, so they are refused; a thread cannot die, so nothing is lost.
"""

from __future__ import annotations

import threading
from typing import Any

from .._engine import errors as _errors
from .._engine.jobs import Batch
from .._engine.scheduler import Scheduler
from .._engine.wire import MIXED
from .._engine.worker import run_batch


class ThreadBackend:
    """Runs a scheduler's batches on ``n`` threads."""

    def __init__(self, n: int, initializer: Any = None, initargs: tuple = ()) -> None:
        self.n = n
        self._cond = threading.Condition(threading.Lock())
        self._generation = 0
        self._closing = False
        self._terminating = False
        self.scheduler = Scheduler(n, self.wakeup)
        self._threads = [
            threading.Thread(target=self._work, args=(initializer, initargs), daemon=True,
                             name=f"polyproc-thread-worker-{i + 1}")
            for i in range(n)
        ]
        for t in self._threads:
            t.start()
        self.thread = threading.Thread(target=self._reaper, daemon=True,
                                       name="polyproc-thread-pool")
        self.thread.start()

    def wakeup(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def close(self) -> None:
        self._closing = True
        self.scheduler.lift_windows()

    def terminate(self) -> None:
        self._closing = self._terminating = True
        self.scheduler.cancel_pending()
        self.wakeup()

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def worker_pids(self) -> list[int]:
        return []

    def stop_job(self, job_id: int) -> bool:
        raise NotImplementedError(
            "a ThreadPool cannot stop a task: a running thread cannot be stopped from outside "
            "(and a queued task would only be skipped). Use a process Pool to terminate() "
            "tasks, or have the task check a threading.Event and return early.")

    def _reaper(self) -> None:
        for t in self._threads:
            t.join()

    def _work(self, initializer: Any, initargs: tuple) -> None:
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as e:  # every thread would die the same way: tasks would wait
                err = _errors.BrokenProcessPool(
                    f"the pool's initializer raised {type(e).__name__} in "
                    f"{threading.current_thread().name}; the pool cannot run tasks. Fix the "
                    "initializer (its exception is the cause).")
                err.__cause__ = e
                self.scheduler.fail_all(err)
                self._closing = True
                self.wakeup()
                return
        sched = self.scheduler
        values: list[Any] | None  # set to None after each batch, to let go of it early
        while True:
            seen = self._generation
            if self._terminating:
                return
            batch = sched.next_batch(self)
            if batch is not None:
                values, errors, elapsed = _run(batch)
                sched.complete(batch.id, values, errors, elapsed)
                # Let go of the tasks' arguments and results now, not when the next batch
                # comes: an idle thread would keep its last batch alive.
                batch = values = errors = None
                continue
            if self._closing and sched.idle():
                self.wakeup()  # let the other threads see it too
                return
            with self._cond:
                if self._generation == seen:
                    self._cond.wait(0.5)


def _run(batch: Batch) -> tuple[list, dict | None, int]:
    """Run ``batch`` in this thread with the process workers' loop (outcomes stay objects)."""
    import time

    t0 = time.monotonic_ns()
    if batch.job is not None:
        job = batch.job
        values, errors = run_batch({job.fid: job.func}, job.fid, job.star, batch.items,
                                   False, _NO_SLOT, _same)
    else:
        assert batch.jobs is not None  # a batch without one job packs several
        funcs = {job.fid: job.func for job in batch.jobs}
        values, errors = run_batch(funcs, MIXED, False, batch.items, True, _NO_SLOT, _same)
    return values, errors, time.monotonic_ns() - t0


_NO_SLOT = [0, 0, 0, 0]  # threads report what they run to nobody


def _same(exc: BaseException) -> BaseException:
    return exc
