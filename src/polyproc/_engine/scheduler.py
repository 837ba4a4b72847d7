"""The scheduler: which tasks go to which worker, and what becomes of each task.

Backends ask ``next_batch()`` when a worker can take work, and report back with
``complete``, ``worker_lost`` (naming its ``Culprit`` when known), ``fail_batch``,
``unsendable`` or ``outcomes_unloadable``. Every task of every job reaches exactly one
outcome through its job's result sink: a value, the task's exception, ``WorkerLostError``
(its worker died; retried first if the job allows), ``TaskTimeoutError``, or cancellation.
The scheduler does no I/O: ``tests/test_scheduler.py`` drives it with a fake backend.

Chunking is adaptive: a job starts with one task per batch, measures the cost per task that
workers report, and grows batches (by at most ``GROWTH`` per step) toward ``map_target_ns``
of work. For a job of known length, batches shrink again as its end nears (at most a
``GUIDED * workers``-th of what is left, "guided" scheduling, down to ``tail_ns`` of work), so
the last batches end together on every worker. Queued single calls (apply/submit) are packed
into one batch of up to ``single_target_ns`` of work once their function's cost is known.

Each is a constructor parameter, so a backend states what a batch costs it (defaults: the
local engine's; the Dask backend passes its own). ``map_target_ns`` 16 ms: the parent's
handling of a batch (~100 us of CPU: a wakeup, a read, a write) takes a core from a worker
when there are as many workers as cores; 16 ms batches keep that under 1%.
``single_target_ns`` 16 ms: a pack pays the same per-batch cost, so it aims at the same
work; it is separate because it also bounds how long a call's result waits for the rest of
its pack (a future is done when its pack is), a latency a backend may trade differently.
``tail_ns`` 0.5 ms: the guided tail balances the end (400 heavy-tailed tasks reach 97% of
the ideal makespan with 16 ms and GUIDED 8, 96% with 4 ms and GUIDED 2); as large as
``map_target_ns`` it turns the tail off, for a backend whose round trip per batch costs more
than the imbalance the tail removes. ``dumps`` pickles job functions (default
``reduction.dumps``: cloudpickle for lambdas and closures).
"""

from __future__ import annotations

import collections
import itertools
import pickle
import threading
import types
from collections.abc import Callable
from typing import Any

from .. import reduction
from .errors import TaskTimeoutError, describe_exit
from .jobs import _EMPTY, MAX_UNKNOWN_CHUNK, Batch, Culprit, Job, task_args
from .wire import MIXED

MAP_TARGET_NS = 16_000_000  # aim for ~16 ms of work per batch of a map (see above)
SINGLE_TARGET_NS = 16_000_000  # and per pack of queued single calls
TAIL_NS = 500_000  # the smallest batch near the end of a job (when its tasks are tiny)
GUIDED = 8  # near the end, a batch holds at most 1 / (GUIDED * workers) of what is left
GROWTH = 8
_NO_KWARGS: dict = {}  # shared by every call without keyword arguments (never mutated)


def _pickle_function(func: Any) -> bytes:
    return bytes(reduction.dumps(func, pickle.HIGHEST_PROTOCOL))


class Scheduler:
    """Bookkeeping shared by every backend: pending jobs, batches in flight, outcomes.

    ``n_workers``: how many batches run at once (backends may update it). ``wakeup()``: called
    (any thread, under no lock of ours) when there may be new work for ``next_batch``.
    ``map_target_ns``, ``single_target_ns``, ``tail_ns``: batch sizing, see the module doc.
    ``dumps(func) -> bytes``: how job functions are pickled for workers.
    """

    def __init__(self, n_workers: int, wakeup: Callable[[], None], *,
                 map_target_ns: int = MAP_TARGET_NS,
                 single_target_ns: int = SINGLE_TARGET_NS, tail_ns: int = TAIL_NS,
                 dumps: Callable[[Any], bytes] = _pickle_function) -> None:
        self.n_workers = n_workers
        self.map_target_ns = map_target_ns
        self.single_target_ns = single_target_ns
        self.tail_ns = tail_ns
        self._dumps = dumps
        self.lock = threading.RLock()
        self.pending: collections.deque[Job] = collections.deque()
        self.batches: dict[int, Batch] = {}
        self._job_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self._fids = itertools.count(1)
        self._func_ids: dict[int, tuple[Any, int]] = {}  # id(func) -> (func, fid)
        self._func_blobs: dict[int, bytes] = {}
        self._func_cost: dict[int, float] = {}
        self._func_users: dict[int, int] = {}  # fid -> active jobs, for released functions
        self.released_fids: set[int] = set()  # functions workers should drop
        self.active: dict[int, Job] = {}
        self.wakeup = wakeup
        self.broken: BaseException | None = None
        self.timed_jobs = 0  # active jobs with a per-task timeout (the dispatcher polls then)
        # Jobs stopped by terminate() with tasks still on workers: the backend stops the
        # workers running them (see stop_job).
        self.stopping: list[Job] = []

    # ---------------------------------------------------------------- submitting

    def submit(self, job: Job) -> None:
        """Queue a job (any thread)."""
        with self.lock:
            if self.broken is not None:
                self._fail_job_now(job, self.broken)
                return
            job.id = next(self._job_ids)
            job.fid = self._fid_for(job.func)
            if job.window is not None:
                if job.window_scale:  # 0: the caller's bound, exactly (map's buffersize)
                    job.window_scale = 4 * self.n_workers
                job.sink.wakeup = lambda: self._consumed(job)
            if job.timeout is not None:
                self.timed_jobs += 1
            self.active[job.id] = job
            self.pending.append(job)
        self.wakeup()

    def stop_job(self, job_id: int) -> bool:
        """Stop every task of job ``job_id`` that has no outcome yet (any thread).

        Tasks not sent to a worker are cancelled now. Those on a worker end with
        ``CancelledError`` too, whatever they do next: the job goes on ``self.stopping``, where
        the backend looks for workers running them and stops those workers (``worker_lost``
        with ``stopped=True`` then re-runs the other tasks they held). True if the job had
        tasks without an outcome (or was being stopped already), False if it had finished.
        """
        with self.lock:
            job = self.active.get(job_id)
            if job is None or job.finished:
                return False
            if job.stopping:
                return True
            job.stopping = True
            self._fail_rest(job, _stopped(job, job.next_index))
            if job.inflight:
                self.stopping.append(job)
        self.wakeup()
        return True

    def _consumed(self, job: Job) -> None:
        # The caller took an outcome: a job held back by its window may go on.
        if job.blocked:
            job.blocked = False
            self.wakeup()

    def _fid_for(self, func: Any) -> int:
        entry = self._func_ids.get(id(func))
        if entry is not None and entry[0] is func:
            fid = entry[1]
        else:
            if len(self._func_ids) > 4096:
                self._func_ids = {k: e for k, e in self._func_ids.items() if e[1] in self._func_users}
            fid = next(self._fids)
            self._func_ids[id(func)] = (func, fid)
        if not _lives_in_a_module(func):
            self._func_users[fid] = self._func_users.get(fid, 0) + 1
        return fid

    def _release_func(self, job: Job) -> None:
        # A closure, bound method, partial or lambda is let go (with what it holds) once no
        # active job uses it; workers are told to drop it with their next batch. Functions
        # that live in a module stay cached: the module keeps them alive anyway.
        users = self._func_users.get(job.fid)
        if users is None:
            return
        if users > 1:
            self._func_users[job.fid] = users - 1
            return
        del self._func_users[job.fid]
        entry = self._func_ids.get(id(job.func))
        if entry is not None and entry[1] == job.fid:
            del self._func_ids[id(job.func)]
        self._func_blobs.pop(job.fid, None)
        self._func_cost.pop(job.fid, None)
        if len(self.released_fids) > 4096:
            self.released_fids.clear()  # bounded: a worker may then keep a few stale ones
        self.released_fids.add(job.fid)

    def func_blob(self, job: Job) -> bytes:
        """The function of ``job``, pickled once with the scheduler's ``dumps``."""
        blob = self._func_blobs.get(job.fid)
        if blob is None:
            blob = self._dumps(job.func)
            if len(self._func_blobs) > 4096:
                self._func_blobs.clear()
            self._func_blobs[job.fid] = blob
        return blob

    # ---------------------------------------------------------------- dispatching

    def next_batch(self, worker: Any = None, limit: int | None = None) -> Batch | None:
        """The next batch (at most ``limit`` tasks), or None if there is none now.

        ``worker`` (who asks) is not used: the backend keeps which batches each worker holds.
        """
        with self.lock:
            pending = self.pending
            for _ in range(len(pending)):
                job = pending[0]
                if job.finished or (not job.requeue and job.exhausted):
                    pending.popleft()
                    self._maybe_finish(job)
                    continue
                if job.sink.cancelled() and not job.requeue:
                    if job.single:
                        # A cancelled future must still be told it never ran, or wait() and
                        # as_completed() never count it as done.
                        job.sink.start()
                    job.exhausted = True
                    pending.popleft()
                    self._maybe_finish(job)
                    continue
                job.blocked = True  # before has_work(): a consumer racing us will wake us
                if not job.has_work():
                    pending.rotate(-1)
                    continue
                job.blocked = False
                batch = self._single_batch(limit) if job.single else self._map_batch(job, limit)
                if batch is None:
                    continue
                batch.id = next(self._batch_ids)
                self.batches[batch.id] = batch
                return batch
            return None

    def _map_batch(self, job: Job, limit: int | None) -> Batch | None:
        size = self._chunk_size(job)
        if limit is not None:
            size = min(size, limit)
        try:
            indices, items, isolated = job.take(size)
        except BaseException as e:  # the caller's input iterator raised
            job.exhausted = True
            self.pending.remove(job)
            job.sink.deliver(job.next_index, False, e)
            self._fail_rest(job)
            return None
        if not indices:
            self.pending.remove(job)
            self._maybe_finish(job)
            return None
        job.inflight += len(indices)
        job.last_size = len(indices)
        if job.exhausted and not job.requeue and self.pending and self.pending[0] is job:
            self.pending.popleft()
        est = None if job.cost_ns is None else job.cost_ns * len(indices)
        return Batch(job, None, indices, items, precise=job.timeout is not None or isolated,
                     isolated=isolated, est_ns=est)

    def _single_batch(self, limit: int | None) -> Batch | None:
        """Pack queued single calls (apply/submit) into one batch, sized by their cost."""
        pending = self.pending
        jobs: list[Job] = []
        items: list[Any] = []
        want = cost = None
        while pending and pending[0].single:
            job = pending[0]
            if want is None:
                cost = self._func_cost.get(job.fid)
                singles = sum(1 for j in itertools.islice(pending, 0, 512) if j.single)
                want = 1 if cost is None else max(1, min(
                    int(self.single_target_ns / max(cost, 1.0)), -(-singles // self.n_workers),
                    256))
                if limit is not None:
                    want = min(want, limit)
            if job.requeue and job.requeue[0][2] and jobs:
                break  # an isolated re-run goes alone in a batch of its own
            pending.popleft()
            if job.requeue:
                _index, args, isolate = job.requeue.popleft()
                if job.requeue:
                    pending.appendleft(job)
                if isolate:
                    want = 1
            elif job.exhausted or job.finished:
                continue
            else:
                if not job.sink.start():  # cancelled before it ran
                    job.exhausted = True
                    self._maybe_finish(job)
                    continue
                args = job.source
                job.exhausted = True
            job.inflight += 1
            jobs.append(job)
            items.append((job.fid, args, job.kwargs or _NO_KWARGS))
            if len(jobs) >= want:
                break
        if not jobs:
            return None
        return Batch(None, jobs, [0] * len(jobs), items, precise=True, isolated=len(jobs) == 1,
                     est_ns=None if cost is None else cost * len(jobs))

    def _chunk_size(self, job: Job) -> int:
        if job.chunksize:
            return job.chunksize
        if job.cost_ns is None:
            return 1
        cost = max(job.cost_ns, 1.0)
        size = int(self.map_target_ns / cost)
        size = max(1, min(size, job.last_size * GROWTH))
        total = job.size_hint
        if total is not None:
            guided = max(-(-(total - job.next_index) // (self.n_workers * GUIDED)),
                         int(self.tail_ns / cost))
            cap = min(-(-total // (self.n_workers * 4)), guided)
        else:
            cap = MAX_UNKNOWN_CHUNK
        return max(1, min(size, cap))

    def batch_message(self, batch: Batch, known_fids: set[int]) -> tuple:
        """The message a worker gets for ``batch`` (functions it lacks included).

        ``known_fids`` is not updated here: the caller adds the message's new functions
        (``message[1]``) once the message could be pickled, since a batch that fails to pickle
        (an unpicklable argument) never reaches the worker, nor do its functions.
        """
        new_funcs: dict[int, bytes | None] = {}
        released = self.released_fids
        if released and known_fids:
            for fid in released & known_fids:
                new_funcs[fid] = None  # drop it: no job uses it any more
        if batch.job is not None:
            job = batch.job
            if job.fid not in known_fids:
                new_funcs[job.fid] = self.func_blob(job)
            return (batch.id, new_funcs, job.fid, job.star, batch.items, batch.precise)
        for job in batch.jobs:  # type: ignore[union-attr]
            if job.fid not in known_fids and new_funcs.get(job.fid) is None:
                new_funcs[job.fid] = self.func_blob(job)
        return (batch.id, new_funcs, MIXED, False, batch.items, True)

    def fail_batch(self, batch: Batch, error: BaseException) -> None:
        """Every task of ``batch`` fails with ``error`` (it cannot run anywhere)."""
        with self.lock:
            if self.batches.pop(batch.id, None) is None:
                return
            for pos in range(len(batch)):
                job = batch.job_at(pos)
                job.inflight -= 1
                self._deliver(job, batch.indices[pos], False, error)

    def unsendable(self, batch: Batch, error: BaseException,
                   pickling_error: Callable[[Any], BaseException | None]) -> None:
        """``batch`` could not be pickled: only the tasks whose own arguments fail do.

        ``pickling_error(obj)`` is None when ``obj`` pickles, else the error. Each task whose
        arguments do not pickle fails with its own error; the others go back to the queue.
        If no task alone is to blame (e.g. the function does not pickle), all fail with
        ``error``.
        """
        with self.lock:
            if self.batches.pop(batch.id, None) is None:
                return
            blame: dict[int, BaseException] = {}
            for pos in range(len(batch)):
                e = pickling_error(batch.items[pos])
                if e is not None:
                    blame[pos] = e
            if not blame:
                blame = dict.fromkeys(range(len(batch)), error)
            for pos in range(len(batch)):
                job = batch.job_at(pos)
                job.inflight -= 1
                index = batch.indices[pos]
                if pos in blame:
                    _note(blame[pos], f"(pickling the arguments of task {index} of "
                          f"{job.name}() to send them to a worker)")
                    self._deliver(job, index, False, blame[pos])
                else:
                    self._requeue(job, index, task_args(batch, pos), isolate=False)

    def outcomes_unloadable(self, batch: Batch, error: BaseException) -> None:
        """The outcomes of ``batch`` arrived but cannot be unpickled here.

        A batch of one task: that task fails with ``error``. A larger one: which task's
        outcome is to blame is unknown, so each runs again alone, and only the culprit fails.
        """
        with self.lock:
            if self.batches.pop(batch.id, None) is None:
                return
            if len(batch) == 1:
                job = batch.job_at(0)
                job.inflight -= 1
                self._deliver(job, batch.indices[0], False, error)
                return
            for pos in range(len(batch)):
                job = batch.job_at(pos)
                job.inflight -= 1
                self._requeue(job, batch.indices[pos], task_args(batch, pos), isolate=True)

    # ---------------------------------------------------------------- outcomes

    def complete(self, batch_id: int, values: list[Any], errors: dict[int, Any] | None,
                 elapsed_ns: int, pid: int | None = None) -> Batch | None:
        """A worker finished a batch: deliver each task's outcome."""
        with self.lock:
            batch = self.batches.pop(batch_id, None)
            if batch is None:
                return None
            n = len(batch)
            if batch.job is not None:
                job = batch.job
                per = elapsed_ns / n
                job.cost_ns = per if job.cost_ns is None else 0.5 * (job.cost_ns + per)
                job.inflight -= n
                if job.stopping:  # terminate() was called meanwhile: these are cancelled
                    for index in batch.indices:
                        self._deliver(job, index, False, None)
                    return batch
                if errors:
                    for pos, exc in errors.items():
                        _annotate(exc, job, batch.indices[pos], pid)
                job.sink.deliver_batch(batch.indices, values, errors)
                if job.progress is not None:
                    job.progress(n)
                self._maybe_finish(job)
                return batch
            else:
                for job in batch.jobs:  # type: ignore[union-attr]
                    old = self._func_cost.get(job.fid)
                    per = elapsed_ns / n
                    self._func_cost[job.fid] = per if old is None else 0.5 * (old + per)
            for pos in range(n):
                job = batch.job_at(pos)
                job.inflight -= 1
                if errors and pos in errors:
                    exc = errors[pos]
                    _annotate(exc, job, batch.indices[pos], pid)
                    self._deliver(job, batch.indices[pos], False, exc)
                else:
                    self._deliver(job, batch.indices[pos], True, values[pos])
            return batch

    def worker_lost(self, batches: list[Batch], culprit: Culprit | tuple[int, int] | None = None,
                    pid: int | None = None, exitcode: int | None = None,
                    timed_out: tuple[int, int] | None = None, stopped: bool = False) -> None:
        """A worker (``pid``, ended with ``exitcode``) was lost holding ``batches``.

        ``culprit``: what it was running (None: none of them, or unknown). Every task of
        ``batches`` gets an outcome or runs again; only the culprit task is blamed. A plain
        ``(batch id, position)`` slot row with ``timed_out`` is also accepted (as
        ``Culprit.from_slot(row, timed_out)``). ``stopped``: the backend killed the worker to
        stop a task of a job being stopped (those tasks are cancelled); no task is to blame,
        so all the others run again.
        """
        if culprit is not None and type(culprit) is not Culprit:
            culprit = Culprit.from_slot(culprit, timed_out)
        running, position, overdue = culprit if culprit is not None else (0, -1, False)
        with self.lock:
            for batch in batches:
                if self.batches.pop(batch.id, None) is None:
                    continue
                running_here = running == batch.id
                blamed = None  # the culprit's position in this batch, if known
                if running_here and (position >= 0 or len(batch) == 1):
                    blamed = max(position, 0)
                for pos in range(len(batch)):
                    job = batch.job_at(pos)
                    index = batch.indices[pos]
                    args = task_args(batch, pos)
                    job.inflight -= 1
                    if pos == blamed and not stopped:
                        if overdue:
                            err: BaseException = TaskTimeoutError(
                                f"task {index} of {job.name}() ran longer than its timeout of "
                                f"{job.timeout} s; worker pid {pid} was stopped and replaced")
                            self._deliver(job, index, False, err)
                            continue
                        if job.attempts is None:
                            job.attempts = {}
                        tries = job.attempts.get(index, 0) + 1
                        if tries <= job.retries:
                            job.attempts[index] = tries
                            self._requeue(job, index, args, isolate=True)
                            continue
                        from .broken import WorkerLostError

                        self._deliver(job, index, False, WorkerLostError(
                            f"worker pid {pid} {describe_exit(exitcode)} while running task "
                            f"{index} of {job.name}()"
                            + (f" (after {tries} attempts)" if tries > 1 else "")
                            + "; the pool replaced the worker and ran the other tasks. If the "
                            "task needs more memory than the worker may use, or crashes the "
                            "interpreter, fix that; pass retries=N to run such tasks again."))
                    else:
                        # Not the culprit (or unknown: a fast batch): run it again; a batch
                        # whose culprit is unknown is re-run task by task to find it.
                        self._requeue(job, index, args,
                                      isolate=running_here and blamed is None and not stopped)

    def _requeue(self, job: Job, index: int, args: Any, isolate: bool) -> None:
        if job.stopping:  # never run again: it is cancelled
            self._deliver(job, index, False, None)
            return
        if job.requeue is _EMPTY:
            job.requeue = collections.deque()
        job.requeue.append((index, args, isolate))
        if job not in self.pending:
            self.pending.appendleft(job)

    def fail_all(self, error: BaseException) -> None:
        """The pool cannot run anything (e.g. its initializer fails): fail every task."""
        with self.lock:
            self.broken = error
            for batch in list(self.batches.values()):
                for pos in range(len(batch)):
                    job = batch.job_at(pos)
                    job.inflight -= 1
                    self._deliver(job, batch.indices[pos], False, error)
            self.batches.clear()
            for job in list(self.active.values()):
                self._fail_rest(job, error)
            self.pending.clear()

    def cancel_pending(self, error: BaseException | None = None) -> None:
        """Give every task not yet sent its final outcome (cancelled, or ``error``): a map
        whose rest is cancelled raises ``CancelledError`` there, never ends short."""
        with self.lock:
            for job in list(self.pending):
                self._fail_rest(job, error if error is not None else _cancelled())
            self.pending.clear()

    def _fail_rest(self, job: Job, error: BaseException | None = None) -> None:
        """Every task of ``job`` not sent yet fails with ``error`` (or is cancelled)."""
        while job.requeue:
            index, _args, _ = job.requeue.popleft()
            self._deliver(job, index, False, error or _cancelled())
        if not job.exhausted:
            if job.single:
                job.exhausted = True
                self._deliver(job, 0, False, error or _cancelled())
            elif error is not None and job.length is not None:
                for index in range(job.next_index, job.length):
                    self._deliver(job, index, False, error)
                job.exhausted = True
            else:
                if error is not None:
                    # imap over input of unknown length: one outcome tells the caller the
                    # rest of the input will not run (rather than a silently short result).
                    self._deliver(job, job.next_index, False, error)
                job.exhausted = True
        self._maybe_finish(job)

    def _fail_job_now(self, job: Job, error: BaseException) -> None:
        job.sink.wakeup = self.wakeup
        if job.single:
            if job.sink.start():
                job.sink.deliver(0, False, error)
        elif job.length is not None:
            for index in range(job.length):
                job.sink.deliver(index, False, error)
        else:  # imap: its input is never read; one outcome says why
            job.sink.deliver(0, False, error)
        job.sink.finish()

    def _deliver(self, job: Job, index: int, ok: bool, value: Any) -> None:
        if job.stopping:  # whatever became of the task, terminate() promised it is cancelled
            ok, value = False, _stopped(job, index)
        job.sink.deliver(index, ok, value)
        if job.progress is not None:
            job.progress(1)
        self._maybe_finish(job)

    def _maybe_finish(self, job: Job) -> None:
        if not job.finished and job.exhausted and job.inflight == 0 and not job.requeue:
            job.finished = True
            self._release_func(job)
            if self.active.pop(job.id, None) is not None and job.timeout is not None:
                self.timed_jobs -= 1
            if job.progress is not None:
                job.progress.close()
            job.sink.finish()

    def lift_windows(self) -> None:
        """Closing: run every accepted task even if nobody consumes the results (stdlib
        semantics of ``close()``/``shutdown(wait=True)``), so joining cannot wait forever."""
        with self.lock:
            for job in self.active.values():
                job.window = None
                job.blocked = False
        self.wakeup()

    def idle(self) -> bool:
        """No job has work left or in flight."""
        with self.lock:
            return not self.active

    def running_jobs_with_timeout(self) -> bool:
        return self.timed_jobs > 0


def _cancelled() -> BaseException:
    from concurrent.futures import CancelledError

    return CancelledError("the pool was shut down before this task ran")


def _stopped(job: Job, index: int) -> BaseException:
    from concurrent.futures import CancelledError

    what = "this call" if job.single else f"task {index} of {job.name}()"
    return CancelledError(f"{what} was stopped by terminate() (had it started, the worker "
                          "running it was killed and replaced; the other tasks run as usual)")


def learn_funcs(known_fids: set[int], new_funcs: dict[int, bytes | None]) -> None:
    """Update a worker's set of function ids once a batch message with ``new_funcs`` is sent."""
    for fid, blob in new_funcs.items():
        if blob is None:
            known_fids.discard(fid)
        else:
            known_fids.add(fid)


def _lives_in_a_module(func: Any) -> bool:
    """A plain function or builtin reachable by its module and name (kept alive by it)."""
    kind = type(func)
    if kind is not types.FunctionType and kind is not types.BuiltinFunctionType:
        return False
    return "<" not in getattr(func, "__qualname__", "<")


def _annotate(exc: BaseException, job: Job, index: int, pid: int | None) -> None:
    _note(exc, f"(raised by task {index} of {job.name}() in worker pid {pid})")


def _note(exc: BaseException, note: str) -> None:
    try:
        exc.add_note(note)
    except Exception:
        pass
