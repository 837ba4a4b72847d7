"""What callers wait on: each class receives a job's task outcomes from the scheduler.

The scheduler calls ``deliver(index, ok, value)`` once per task and ``finish()`` when the job
has no task left; ``unconsumed()`` tells it how many outcomes wait for the caller (the
backpressure that keeps ``imap`` memory bounded). ``AsyncResult``, ``MapResult``,
``IMapIterator`` and ``IMapUnorderedIterator`` are the stdlib Pool's result types.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._exceptions import TimeoutError as ProcessTimeoutError

__all__ = ["AsyncResult", "ApplyResult", "MapResult", "IMapIterator", "IMapUnorderedIterator",
           "FutureSink"]


class ResultSink:
    """Base of everything that receives outcomes from the scheduler."""

    wakeup: Callable[[], None] | None = None  # set by the scheduler: call when consumed
    #: ``(backend, job id)`` of the call, set by the pool that made it (see ``_terminate``).
    _stop: tuple[Any, int] | None = None

    def deliver(self, index: int, ok: bool, value: Any) -> None:
        raise NotImplementedError

    def deliver_batch(self, indices: Any, values: list[Any], errors: dict[int, Any] | None) -> None:
        """Outcomes of several tasks at once (``errors`` maps positions to exceptions)."""
        for pos, index in enumerate(indices):
            if errors and pos in errors:
                self.deliver(index, False, errors[pos])
            else:
                self.deliver(index, True, values[pos])

    def finish(self) -> None:
        """Called once, after the last ``deliver`` (also when the job had no task)."""

    def unconsumed(self) -> int:
        return 0

    def cancelled(self) -> bool:
        return False

    def start(self) -> bool:
        """Called before the job's first task is sent; False means 'cancelled, skip it'."""
        return True

    def _terminate(self) -> bool:
        stop = self._stop
        return False if stop is None else stop[0].stop_job(stop[1])


#: Guards the hand-over between a waiter making an AsyncResult's wake-up lock and the
#: scheduler setting the result (held for a few instructions; shared by every result).
_waiter_guard = threading.Lock()


def _reinit_waiter_guard() -> None:
    global _waiter_guard
    _waiter_guard = threading.Lock()  # a fork child must not inherit it held by a dispatcher


os.register_at_fork(after_in_child=_reinit_waiter_guard)


class AsyncResult(ResultSink):
    """The result of ``apply_async``/``map_async``: ``get``, ``wait``, ``ready``, ``successful``."""

    def __init__(self, callback: Callable[[Any], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None) -> None:
        self._ready = False
        # A lock held until the result is set, made only when somebody must wait for it
        # (a threading.Event per result costs more than the rest of apply_async).
        self._waiter: Any = None
        self._callback = callback
        self._error_callback = error_callback
        self._success = False
        self._value: Any = None

    def ready(self) -> bool:
        """Whether the call has completed."""
        return self._ready

    def successful(self) -> bool:
        """Whether the call completed without raising (ValueError if not ready yet)."""
        if not self._ready:
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is available or ``timeout`` seconds pass."""
        if self._ready:
            return
        with _waiter_guard:
            if self._ready:
                return
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = threading.Lock()
                waiter.acquire()
        got = False
        try:
            if timeout is None:
                # Bounded waits keep Ctrl-C responsive; checking _ready too means no waiter
                # depends on another passing the lock on (one interrupted while holding it).
                while not self._ready and not (got := waiter.acquire(True, 0.25)):
                    pass
            else:
                got = waiter.acquire(True, max(timeout, 0.0))
        finally:
            if got:
                waiter.release()  # for the next waiter

    def terminate(self) -> bool:
        """Stop this call now: True if some task of it had not finished, else False.

        A task still queued is dropped; a running one is stopped by killing its worker
        (SIGKILL, as ``timeout=`` does), which the pool replaces; the other tasks that worker
        held run again elsewhere. Every task of the call not finished yet (all of them, for
        ``map_async``) ends with ``CancelledError``, which ``get()`` raises (for a running
        task once its worker is gone), unless a task of the call had failed before. A
        ``ThreadPool`` cannot stop a thread: it raises ``NotImplementedError``.
        """
        return self._terminate()

    def get(self, timeout: float | None = None) -> Any:
        """Return the result, or raise the task's exception; TimeoutError if not ready in time."""
        if not self._ready:
            self.wait(timeout)
            if not self._ready:
                raise ProcessTimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, ok: bool, value: Any) -> None:
        self._success, self._value = ok, value
        if ok and self._callback is not None:
            _call_quietly(self._callback, value)
        if not ok and self._error_callback is not None:
            _call_quietly(self._error_callback, value)
        with _waiter_guard:
            was_ready, self._ready = self._ready, True
            waiter = self._waiter
        if waiter is not None and not was_ready:
            waiter.release()

    __class_getitem__ = classmethod(lambda cls, item: cls)


ApplyResult = AsyncResult


class _ApplySink(AsyncResult):
    def deliver(self, index: int, ok: bool, value: Any) -> None:
        self._set(ok, value)


class MapResult(AsyncResult):
    """Result of ``map_async``/``starmap_async``: the list of values in input order.

    Like the stdlib, it is ready as soon as one task fails (with that task's exception);
    the other tasks still run, each to its own outcome.
    """

    def __init__(self, length: int, callback: Callable[[Any], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None) -> None:
        super().__init__(callback, error_callback)
        self._values: list[Any] = [None] * length
        self._remaining = length
        self._failed = False
        if length == 0:
            self._set(True, [])

    def deliver(self, index: int, ok: bool, value: Any) -> None:
        if self._failed:
            return
        if not ok:
            self._failed = True
            self._values = []
            self._set(False, value)
            return
        self._values[index] = value
        self._remaining -= 1
        if self._remaining == 0:
            self._set(True, self._values)

    def deliver_batch(self, indices: Any, values: list[Any], errors: dict[int, Any] | None) -> None:
        if errors or self._failed or type(indices) is not range:
            super().deliver_batch(indices, values, errors)
            return
        self._values[indices.start:indices.stop] = values
        self._remaining -= len(values)
        if self._remaining == 0:
            self._set(True, self._values)


class _IterBase(ResultSink):
    """Outcomes travel in chunks ``(values, errors)``: a batch's values list as the worker
    sent it, and None or ``{position: exception}``; a consumer takes whole chunks."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._done = False
        self._closed = False
        self._count = 0  # outcomes in the shared buffer, not taken by the consumer yet
        # Chunks already taken from the shared buffer, in order: the consumer drains this
        # without locking, and refills it (one lock, one wakeup) with all that is ready.
        # They no longer count against the job's window, so memory stays within 2 windows.
        self._local: collections.deque[tuple[list[Any], dict[int, Any] | None]] = \
            collections.deque()
        # ``next()`` takes values from a C-level iterator over the current chunk: atomic
        # under the GIL, so threads sharing this iterator each get distinct values. Only
        # moving to the next chunk takes ``_consumer`` (one chunk per refill, never two).
        self._cur: Any = iter(())
        self._consumer = threading.Lock()

    def __iter__(self) -> _IterBase:
        return self

    def next(self, timeout: float | None = None) -> Any:
        """The next value; ``multiprocessing.TimeoutError`` if none arrives in ``timeout``."""
        try:
            value = next(self._cur)
        except StopIteration:
            value = self._next_slow(timeout)
        if type(value) is _Raise:
            raise value.exc
        return value

    __next__ = next

    def _next_slow(self, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        consumer = self._consumer
        while not consumer.acquire(True, 0.25 if deadline is None else
                                   max(0.0, min(deadline - time.monotonic(), 0.25))):
            if deadline is not None and time.monotonic() >= deadline:
                raise ProcessTimeoutError
        try:
            while True:
                try:
                    return next(self._cur)  # another thread may have moved on meanwhile
                except StopIteration:
                    pass
                values, errors = self._next_chunk(
                    None if deadline is None else deadline - time.monotonic())
                if errors:
                    for pos, exc in errors.items():
                        values[pos] = _Raise(exc)
                self._cur = draining(values)
        finally:
            consumer.release()

    def _next_chunk(self, timeout: float | None = None) -> tuple[list[Any], dict[int, Any] | None]:
        """The next chunk of outcomes, for ONE consumer that takes whole chunks instead of
        calling ``next``; StopIteration at the end, TimeoutError as ``next``."""
        local = self._local
        if local:
            return local.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._refill(local):
                if self._done:
                    raise StopIteration
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ProcessTimeoutError
                # Bounded waits keep Ctrl-C responsive whatever the platform's lock does.
                self._cond.wait(0.25 if remaining is None else min(remaining, 0.25))
        if self.wakeup is not None:
            self.wakeup()
        return local.popleft()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def close(self) -> None:
        """Stop running the rest of the input (tasks already sent still finish)."""
        self._closed = True

    def cancelled(self) -> bool:
        return self._closed

    def terminate(self) -> bool:
        """Stop this call now (as ``AsyncResult.terminate``): every task without an outcome
        yet ends with ``CancelledError``, the rest of the input is not read. True if some
        task had no outcome yet, False if the call had finished."""
        return self._terminate()

    def unconsumed(self) -> int:
        return self._count

    def _refill(self, local: collections.deque[tuple[list[Any], dict[int, Any] | None]]
                ) -> bool:
        """Move every chunk ready for the consumer into ``local`` (lock held)."""
        raise NotImplementedError


def draining(values: list[Any]) -> Iterator[Any]:
    """A C-level iterator over ``values`` that lets go of each value as it hands it out.

    The caller owns its results: one it drops must be collectable at once, not only when the
    rest of its chunk has been consumed (``values`` is consumed: it ends empty).
    """
    values.reverse()
    return map(values.pop, itertools.repeat(-1, len(values)))


class _Raise:
    """Stands in a chunk, for ``next()``, for a task that failed with ``exc``."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _one(ok: bool, value: Any) -> tuple[list[Any], dict[int, Any] | None]:
    return ([value], None) if ok else ([None], {0: value})


class IMapIterator(_IterBase):
    """Iterator over ``imap`` results in input order."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer: dict[int, tuple[list[Any], dict[int, Any] | None]] = {}  # by 1st index
        self._next_index = 0

    def deliver(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            self._buffer[index] = _one(ok, value)
            self._count += 1
            if index == self._next_index:
                self._cond.notify()

    def deliver_batch(self, indices: Any, values: list[Any], errors: dict[int, Any] | None) -> None:
        if type(indices) is not range:  # tasks run again after a worker died: one by one
            super().deliver_batch(indices, values, errors)
            return
        with self._cond:
            self._buffer[indices.start] = (values, errors or None)
            self._count += len(values)
            if indices.start == self._next_index:
                self._cond.notify()

    def _refill(self, local: collections.deque[tuple[list[Any], dict[int, Any] | None]]
                ) -> bool:
        buffer = self._buffer
        index = start = self._next_index
        while index in buffer:
            chunk = buffer.pop(index)
            local.append(chunk)
            index += len(chunk[0])
        self._count -= index - start
        self._next_index = index
        return index != start


class BoundedIMapIterator(IMapIterator):
    """An ``IMapIterator`` whose window counts what its consumer holds but has not handed
    out yet (``Executor.map(buffersize=)``: a strict bound on tasks read ahead)."""

    def __init__(self) -> None:
        super().__init__()
        self.held = 0  # outcomes taken from the shared buffer, not handed out yet

    def _refill(self, local: collections.deque[tuple[list[Any], dict[int, Any] | None]]
                ) -> bool:
        before = self._count
        moved = super()._refill(local)
        self.held += before - self._count
        return moved

    def unconsumed(self) -> int:
        return self._count + self.held

    def handed_out(self) -> None:
        """The consumer handed one outcome to its caller: the window has room again."""
        self.held -= 1
        if self.wakeup is not None:
            self.wakeup()


class IMapUnorderedIterator(_IterBase):
    """Iterator over ``imap_unordered`` results in completion order."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer: collections.deque[tuple[list[Any], dict[int, Any] | None]] = \
            collections.deque()

    def deliver(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            self._buffer.append(_one(ok, value))
            self._count += 1
            self._cond.notify()

    def deliver_batch(self, indices: Any, values: list[Any], errors: dict[int, Any] | None) -> None:
        with self._cond:
            self._buffer.append((values, errors or None))
            self._count += len(values)
            self._cond.notify()

    def _refill(self, local: collections.deque[tuple[list[Any], dict[int, Any] | None]]
                ) -> bool:
        if not self._buffer:
            return False
        local.extend(self._buffer)
        self._buffer.clear()
        self._count = 0
        return True


class FutureSink(ResultSink):
    """Feeds a ``concurrent.futures.Future`` (one task)."""

    __slots__ = ("future",)

    def __init__(self, future: Any) -> None:
        self.future = future

    def start(self) -> bool:
        return self.future.set_running_or_notify_cancel()

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def deliver(self, index: int, ok: bool, value: Any) -> None:
        if ok:
            self.future.set_result(value)
        elif isinstance(value, _cancelled_error_type()) and self.future.cancel():
            # Never started: a real cancellation. Move the future on to CANCELLED_AND_NOTIFIED
            # too, or wait()/as_completed() never see it done (CPython issues 87893, 109934).
            self.future.set_running_or_notify_cancel()
        elif isinstance(value, _cancelled_error_type()) and \
                getattr(self.future, "_cancel_running", _no)():
            pass  # stopped while running (terminate()): CANCELLED as well
        else:
            try:
                self.future.set_exception(value)
            except Exception:  # already cancelled or set
                pass


def _no() -> bool:
    return False


def _cancelled_error_type() -> type[BaseException]:
    from concurrent.futures import CancelledError  # only executors, which import it anyway

    return CancelledError


def _call_quietly(fn: Callable[[Any], object], arg: Any) -> None:
    try:
        fn(arg)
    except Exception:
        import traceback

        traceback.print_exc()
