"""What the scheduler schedules: a ``Job`` (one call of map/imap/apply/submit), the ``Batch``
of tasks sent together to one worker, and the ``Culprit`` a lost worker was running.

Plain data with the little logic that reads only itself (a job's window, taking its next
tasks); what becomes of them is the scheduler's (``scheduler.py``).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, cast

from .results import ResultSink

MAX_UNKNOWN_CHUNK = 4096  # cap for inputs of unknown length (keeps imap memory flat)
_EMPTY: tuple = ()  # shared, falsy stand-in for a job's requeue deque


class Job:
    """A call to map/imap/apply/submit: a function, its task arguments and a result sink."""

    __slots__ = (
        "id", "name", "func", "fid", "star", "kwargs", "source", "length", "chunksize",
        "sink", "retries", "timeout", "window", "single", "next_index", "exhausted",
        "inflight", "requeue", "attempts", "cost_ns", "last_size", "finished", "blocked",
        "progress", "window_scale", "seq", "size_hint", "stopping",
        "__weakref__",
    )

    def __init__(self, name: str, func: Callable[..., Any], source: Iterable[Any], sink: ResultSink,
                 *, length: int | None = None, star: bool = False,
                 kwargs: dict[str, Any] | None = None, chunksize: int | None = None,
                 retries: int = 0, timeout: float | None = None, window: int | None = None,
                 single: bool = False, size_hint: int | None = None,
                 strict_window: bool = False) -> None:
        self.id = 0
        self.name = name
        self.func = func
        self.fid = 0
        self.star = star
        self.kwargs = kwargs
        if single:  # ``source`` is the call's argument tuple
            self.seq: Sequence[Any] | None = None
            self.source = source
        else:
            # A list or tuple is sliced (a batch is one C-level copy), a range too (a batch is
            # then a range: a few bytes to pickle, whatever its length); the rest is iterated.
            self.seq = cast("Sequence[Any]", source) if type(source) in (list, tuple, range) else None
            self.source = iter(source)
        self.length = length
        # How many tasks there will be, if known (batch sizing only; ``length`` also says
        # the job's outcomes are delivered per index, e.g. to fail the rest of a map).
        self.size_hint = length if size_hint is None else size_hint
        self.chunksize = chunksize
        self.sink = sink
        self.retries = retries
        self.timeout = timeout
        self.window = window
        self.single = single
        self.next_index = 0
        self.exhausted = False
        self.inflight = 0
        # Allocated on first use: most jobs never lose a worker.
        self.requeue: collections.deque[tuple[int, Any, bool]] = _EMPTY  # type: ignore[assignment]
        self.attempts: dict[int, int] | None = None
        self.cost_ns: float | None = None
        self.last_size = 0
        self.finished = False
        self.blocked = False
        self.progress: Any = None
        # How many batches the window may hold beyond ``window`` tasks; 0 for a strict bound.
        self.window_scale = 0 if strict_window else 8
        self.stopping = False  # terminate() was called: every outcome still due is cancelled

    def has_work(self) -> bool:
        if self.requeue:
            return True
        if self.exhausted:
            return False
        if self.window is not None:
            return self.inflight + self.sink.unconsumed() < self._window()
        return True

    def _window(self) -> int:
        # Room for a few batches per worker at the current chunk size, so the window never
        # caps throughput, yet stays a small multiple of one batch: memory stays flat.
        window = self.window
        assert window is not None  # only a job with a window asks
        if self.chunksize:  # the caller chose the batch size: make room for it
            return max(window, self.window_scale * self.chunksize)
        return max(window,
                   min(self.window_scale * self.last_size, 4 * MAX_UNKNOWN_CHUNK))

    def take(self, n: int) -> tuple[Sequence[int], Sequence[Any], bool]:
        """Up to ``n`` tasks: (indices, args, isolated). Requeued tasks come first."""
        if self.requeue:
            index, args, isolate = self.requeue[0]
            if isolate:
                self.requeue.popleft()
                return [index], [args], True
            indices: list[int] = []
            requeued: list[Any] = []
            while self.requeue and len(indices) < n and not self.requeue[0][2]:
                index, args, _ = self.requeue.popleft()
                indices.append(index)
                requeued.append(args)
            return indices, requeued, False
        if self.window is not None:
            n = max(1, min(n, self._window() - self.inflight - self.sink.unconsumed()))
        start = self.next_index
        items: Sequence[Any]
        if self.seq is not None:
            items = self.seq[start:start + n]
        else:
            items = list(itertools.islice(self.source, n))
        self.next_index += len(items)
        if len(items) < n or (self.seq is not None and self.next_index == len(self.seq)):
            self.exhausted = True
            self.source = iter(())
            self.seq = None
        return range(start, start + len(items)), items, False


class Batch:
    """Tasks sent together to one worker."""

    __slots__ = ("id", "job", "jobs", "indices", "items", "precise", "isolated", "est_ns")

    def __init__(self, job: Job | None, jobs: list[Job] | None, indices: Sequence[int],
                 items: Sequence[Any], precise: bool, isolated: bool = False,
                 est_ns: float | None = None) -> None:
        self.id = 0
        self.est_ns = est_ns  # expected run time, once the tasks' cost is known
        self.job = job
        self.jobs = jobs
        self.indices = indices
        self.items = items
        self.precise = precise
        self.isolated = isolated

    def job_at(self, pos: int) -> Job:
        return self.job if self.job is not None else self.jobs[pos]  # type: ignore[index]

    def __len__(self) -> int:
        return len(self.indices)


class Culprit(NamedTuple):
    """What a lost worker was running: task ``position`` of the batch ``batch_id``.

    ``position`` -1: that batch was running, but not which of its tasks (a batch of one task
    is then its culprit; a larger one is re-run task by task to find it). ``timed_out``: the
    backend stopped the worker because that task overran its timeout (it fails with
    ``TaskTimeoutError``, never retried). No culprit at all (``None``): the worker's batches
    had not started, or which one ran is unknown; they are all run again.
    """

    batch_id: int
    position: int = -1
    timed_out: bool = False

    @classmethod
    def from_slot(cls, row: Any, timed_out: tuple[int, int] | None = None) -> Culprit | None:
        """From a worker's ``Slots`` row ``(batch id, position, ...)``; ``timed_out`` is the
        ``(batch id, position)`` the backend stopped the worker for, if it did."""
        batch_id, position = row[0], row[1]
        if batch_id <= 0:  # batch ids start at 1: the worker had not started one
            return None
        overdue = (timed_out is not None and timed_out[0] == batch_id
                   and (position < 0 or timed_out[1] == position))
        return cls(batch_id, position, overdue)


def task_args(batch: Batch, pos: int) -> Any:
    """What task ``pos`` of ``batch`` is called with (as its job stores it)."""
    return batch.items[pos] if batch.job is not None else batch.items[pos][1]
