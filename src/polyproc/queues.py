"""Process-safe FIFO queues: ``Queue``, ``JoinableQueue`` and ``SimpleQueue``.

The API and semantics are ``multiprocessing.queues``'s, with these differences by design:

* Objects are pickled when ``put`` is called, not later in a background thread: mutating an
  object after putting it does not change what arrives, and an unpicklable object raises in
  ``put``.
* Messages travel through a shared-memory ring buffer (``polyproc._resources.ring``), not a
  pipe: an uncontended ``put``/``get`` copies the pickle into or out of shared memory and
  makes no system call. A ``Queue`` uses its background feeder thread only when the ring is
  full or a message is larger than half the ring; ``SimpleQueue`` has no thread and blocks
  instead, like the stdlib's.
* A process killed while it holds a queue's lock does not hang the others (the locks are
  robust mutexes) and leaves the ring consistent: a half-written message is never seen.

As with the stdlib, a process that put messages waits at exit until its feeder thread has
written them to the queue, unless ``cancel_join_thread()`` was called; queues are shared with
child processes by inheritance (passed in ``Process(args=...)``), not through other queues.
"""

from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import threading
import types
import weakref
from queue import Empty, Full

from . import context, reduction, util
from ._resources.ring import DEFAULT_CAPACITY, SEM_VALUE_MAX, PickledBytes, Ring

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]

#: How long (seconds) a ``Queue.put`` waits for another writer to release the ring before it
#: hands the message to its feeder thread instead (``put`` on a queue with room never blocks).
_WRITER_PATIENCE = 0.05
#: The feeder lets other writers in after this many messages.
_FEED_BATCH = 256
#: ``bytes`` objects larger than this go into the ring without an intermediate pickle copy.
_BIG_BYTES = 64 * 1024
_SLICE = 0.1

_loads = pickle.loads
_sentinel = object()


# ---------------------------------------------------------------- pickling at put time


_picklers: list[tuple[io.BytesIO, pickle.Pickler, tuple[int, int]]] = []  # idle, reusable
_by_value: list[bool] = []  # [whether __main__ needs pickling by value], computed once
_copyreg_table = copyreg.dispatch_table
_extra_reducers = reduction._extra_reducers


def _dumps(obj: Any) -> bytes:
    """Pickle ``obj`` now with polyproc's reducers (cloudpickle for lambdas and closures).

    Picklers are reused (making one costs more than pickling a small object); each call
    takes one from the idle list (``list.pop`` is atomic), so threads never share one.
    When ``__main__`` cannot be imported by other processes (``python -c``, a REPL, a
    notebook), a pickle that refers to ``__main__`` is redone by value with cloudpickle.
    """
    key = (len(_copyreg_table), len(_extra_reducers))
    try:
        entry = _picklers.pop()
    except IndexError:
        entry = None
    if entry is None or entry[2] != key:
        if not _by_value:
            _by_value.append(reduction._by_value_needed())
        buf = io.BytesIO()
        p = pickle.Pickler(buf, 5)
        p.dispatch_table = reduction._dispatch_table()
        entry = (buf, p, key)
    buf, p = entry[0], entry[1]
    buf.seek(0)
    buf.truncate()
    try:
        p.dump(obj)
        data = buf.getvalue()
    except (pickle.PicklingError, AttributeError, TypeError):
        data = None
    p.clear_memo()
    if data is None:
        _picklers.append(entry)
        return bytes(reduction.dumps(obj))  # raises the original error if cloudpickle can't
    if len(data) <= 1 << 20:
        _picklers.append(entry)  # (a large buffer is dropped rather than kept)
    if _by_value[0] and b"__main__" in data:
        return bytes(reduction.dumps(obj))
    return data


#: Types the pickler writes itself, never asking a reducer: such objects, and tuples of them,
#: pickle the same with the plain ``pickle.dumps`` (half the cost of a configured Pickler).
_ATOMIC = frozenset({int, float, str, bytes, bool, type(None)})
_plain_dumps = pickle.dumps


def _pickle(obj: Any) -> Any:
    """What ``put`` writes for ``obj``: its pickle (large ``bytes`` are not copied here)."""
    t = type(obj)
    if t in _ATOMIC:
        if t is bytes and len(obj) > _BIG_BYTES:
            return PickledBytes(obj)
        return _plain_dumps(obj, 5)
    if t is tuple and _ATOMIC.issuperset(map(type, obj)):
        return _plain_dumps(obj, 5)
    return _dumps(obj)


def _ring_capacity() -> int:
    value = os.environ.get("POLYPROC_QUEUE_BYTES")
    return int(value) if value else DEFAULT_CAPACITY


# ---------------------------------------------------------------- Queue


class Queue:
    """A FIFO queue shared by processes (``multiprocessing.Queue``'s API).

    ``maxsize`` > 0 bounds the number of messages: ``put`` then blocks (or raises ``Full``)
    while the queue holds that many.
    """

    __class_getitem__: Any = classmethod(types.GenericAlias)
    _notempty: threading.Condition

    def __init__(self, maxsize: int = 0, *, ctx: Any = None, _capacity: int | None = None
                 ) -> None:
        bounded = maxsize > 0
        self._bounded = bounded
        self._maxsize = maxsize if bounded else SEM_VALUE_MAX
        self._ring = Ring.create(_capacity or _ring_capacity(), maxsize if bounded else 0)
        self._is_fork_ctx = context.is_fork_context(ctx)
        self._opid = os.getpid()
        self._ignore_epipe = False  # stdlib attribute kept for compatibility
        self._reset()
        util.register_after_fork(self, Queue._after_fork)

    def __getstate__(self) -> tuple[Any, ...]:
        context.assert_spawning(self)
        if self._is_fork_ctx:
            # As the stdlib's (whose locks are fork-only semaphores); ours could travel, but
            # code written for either library must fail the same way.
            raise RuntimeError(context.FORK_CONTEXT_SHARED)
        return (self._ignore_epipe, self._maxsize, self._bounded, self._ring, self._opid)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self._ignore_epipe, self._maxsize, self._bounded, self._ring, self._opid) = state
        self._is_fork_ctx = False  # it came to a spawn or forkserver child: it may go on
        self._reset()

    def _after_fork(self) -> None:
        self._reset(after_fork=True)

    def _reset(self, after_fork: bool = False) -> None:
        if after_fork:
            self._notempty._at_fork_reinit()  # type: ignore[attr-defined]
        else:
            self._notempty = threading.Condition(threading.Lock())
        self._buffer: collections.deque[Any] = collections.deque()
        self._thread: threading.Thread | None = None
        self._jointhread: util.Finalize | None = None
        self._joincancelled = False
        self._closed = False
        self._used = False  # put() was called here (the stdlib's feeder thread started)
        self._close: util.Finalize | None = None
        ring = self._ring
        self._slots_release = ring.slots.release if self._bounded else None
        self._get = ring.make_get(_loads, Empty, self._slots_release)
        self._try_send = ring.try_send

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object at {id(self):#x}>"

    # -- putting ---------------------------------------------------------------------------

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` on the queue (pickled now). On a bounded queue that is full, wait
        (at most ``timeout`` seconds) for room, or raise ``queue.Full`` if ``block`` is False
        or the time is up."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        data = _pickle(obj)
        self._used = True
        if self._bounded and not self._ring.slots.acquire(block, timeout):
            raise Full
        if self._buffer or not self._try_send(data, _WRITER_PATIENCE):
            self._enqueue(data)

    def put_nowait(self, obj: Any) -> None:
        """Equivalent to ``put(obj, False)``."""
        return self.put(obj, False)

    def _enqueue(self, data: bytes) -> None:
        """Hand ``data`` to the feeder thread (the ring is full, or the message is large, or
        earlier messages of this process are still waiting there: order is kept)."""
        with self._notempty:
            if self._thread is None:
                self._start_thread()
            self._buffer.append(data)
            self._notempty.notify()

    # -- getting ---------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return a message, waiting (at most ``timeout`` seconds) for one if
        ``block``; raise ``queue.Empty`` if there is none in time."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        return self._get(block, timeout)

    def get_nowait(self) -> Any:
        """Equivalent to ``get(False)``."""
        return self.get(False)

    # -- state -----------------------------------------------------------------------------

    def qsize(self) -> int:
        """Approximate number of messages in the queue (not reliable, like the stdlib's)."""
        if self._bounded:
            return self._maxsize - self._ring.slots._get_value()
        n_put, n_got = self._ring.counts()
        return max(0, n_put - n_got) + len(self._buffer)

    def empty(self) -> bool:
        """True if the queue looks empty (not reliable while other processes use it).

        Like the stdlib's, ``OSError('handle is closed')`` once this process has put
        something and closed the queue (a queue closed unused still answers).
        """
        if self._closed and self._used:
            raise OSError("handle is closed")
        return self._ring.empty() and not self._buffer

    def full(self) -> bool:
        """True if a bounded queue holds ``maxsize`` messages (not reliable)."""
        return self._bounded and bool(self._ring.slots._is_zero())

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """This process will put and get no more: the feeder thread finishes writing what
        was put and exits. ``put``/``get`` then raise ValueError, and ``empty()`` raises
        OSError if this process had put something (as the stdlib's, whose pipe is closed
        then)."""
        self._closed = True
        close = self._close
        if close:
            self._close = None
            close()

    def join_thread(self) -> None:
        """Wait until the feeder thread has written everything put (after ``close()``)."""
        assert self._closed, f"Queue {self!r} not closed"
        if self._jointhread:
            self._jointhread()

    def cancel_join_thread(self) -> None:
        """Don't make this process wait at exit for the feeder thread (messages still in its
        buffer may then be lost)."""
        self._joincancelled = True
        try:
            self._jointhread.cancel()  # type: ignore[union-attr]
        except AttributeError:
            pass

    # -- the feeder thread -----------------------------------------------------------------

    def _start_thread(self) -> None:
        self._buffer.clear()
        self._thread = threading.Thread(
            target=Queue._feed,
            args=(self._ring, self._buffer, self._notempty, self._on_queue_feeder_error,
                  self._slots_release),
            name="QueueFeederThread",
            daemon=True,
        )
        self._thread.start()
        if not self._joincancelled:
            self._jointhread = util.Finalize(
                self._thread, Queue._finalize_join, [weakref.ref(self._thread)], exitpriority=-5
            )
        self._close = util.Finalize(
            self, Queue._finalize_close, [self._buffer, self._notempty], exitpriority=10
        )

    @staticmethod
    def _finalize_join(twr: weakref.ref[threading.Thread]) -> None:
        thread = twr()
        if thread is not None:
            thread.join()

    @staticmethod
    def _finalize_close(buffer: collections.deque[Any], notempty: threading.Condition) -> None:
        with notempty:
            buffer.append(_sentinel)
            notempty.notify()

    @staticmethod
    def _feed(ring: Ring, buffer: collections.deque[Any], notempty: threading.Condition,
              onerror: Any, slots_release: Any) -> None:
        """Write the buffered messages to the ring in order, waiting for space as needed."""
        wlock = ring.wlock
        while True:
            with notempty:
                while not buffer:
                    notempty.wait()
            wlock.acquire()
            try:
                for _ in range(_FEED_BATCH):
                    if not buffer:
                        break
                    data = buffer[0]
                    if data is _sentinel:
                        buffer.popleft()
                        return
                    try:
                        ring.write(data)
                    except Exception as e:
                        if util.is_exiting():
                            return
                        if slots_release is not None:
                            slots_release()
                        onerror(e, data)
                    buffer.popleft()
            finally:
                wlock.release()

    @staticmethod
    def _on_queue_feeder_error(e: BaseException, obj: Any) -> None:
        """Called when the feeder thread fails to write a message (stdlib hook)."""
        import traceback

        traceback.print_exc()


# ---------------------------------------------------------------- JoinableQueue


class JoinableQueue(Queue):
    """A ``Queue`` that counts unfinished tasks: ``task_done()`` after each ``get``,
    ``join()`` waits until every message put has been marked done."""

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj`` (see ``Queue.put``) and count it as an unfinished task."""
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        data = _pickle(obj)
        self._used = True
        ring = self._ring
        if self._bounded and not ring.slots.acquire(block, timeout):
            raise Full
        ring.unfinished.release()
        if self._buffer or not self._try_send(data, _WRITER_PATIENCE):
            self._enqueue(data)

    def task_done(self) -> None:
        """Mark one task taken with ``get`` as done (ValueError if called too often)."""
        ring = self._ring
        unfinished = ring.unfinished
        if not unfinished.acquire(False):
            raise ValueError("task_done() called too many times")
        if unfinished._is_zero():
            for _ in range(ring.joiners._get_value()):
                ring.done.release()

    def join(self) -> None:
        """Block until every message put on the queue has been marked done."""
        ring = self._ring
        unfinished = ring.unfinished
        if unfinished._is_zero():
            return
        ring.joiners.release()
        try:
            while not unfinished._is_zero():
                ring.done.acquire(True, _SLICE)
        finally:
            ring.joiners.acquire()


# ---------------------------------------------------------------- SimpleQueue


class SimpleQueue:
    """A minimal process-safe FIFO (``multiprocessing.SimpleQueue``'s API): ``put`` blocks
    while the ring is full; there is no feeder thread."""

    __class_getitem__: Any = classmethod(types.GenericAlias)

    def __init__(self, *, ctx: Any = None, _capacity: int | None = None) -> None:
        self._ring = Ring.create(_capacity or _ring_capacity())
        self._is_fork_ctx = context.is_fork_context(ctx)
        self._reset()

    def __getstate__(self) -> tuple[Any, ...]:
        context.assert_spawning(self)
        if self._is_fork_ctx:
            raise RuntimeError(context.FORK_CONTEXT_SHARED)  # as Queue's
        return (self._ring,)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self._ring,) = state
        self._is_fork_ctx = False
        self._reset()

    def _reset(self) -> None:
        self._closed = False
        self._get = self._ring.make_get(_loads, Empty)

    def close(self) -> None:
        """Release this process's use of the queue: ``put``/``get`` then raise OSError."""
        self._closed = True

    def empty(self) -> bool:
        """True if the queue looks empty (``OSError`` once closed, like the stdlib's)."""
        if self._closed:
            raise OSError("handle is closed")
        return self._ring.empty()

    def get(self) -> Any:
        """Remove and return a message, waiting for one."""
        if self._closed:
            raise OSError("handle is closed")
        return self._get()

    def put(self, obj: Any) -> None:
        """Put ``obj`` (pickled now), waiting while the ring is full."""
        if self._closed:
            raise OSError("handle is closed")
        data = _pickle(obj)
        ring = self._ring
        if ring.try_send(data, 0.0):
            return
        ring.wlock.acquire()
        try:
            ring.write(data)  # waits for space or streams; posts its own tokens
        finally:
            ring.wlock.release()
