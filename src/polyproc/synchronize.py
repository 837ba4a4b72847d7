"""Synchronization primitives shared between processes: the API of ``multiprocessing.synchronize``.

``Lock``, ``RLock``, ``Semaphore`` and ``BoundedSemaphore`` are POSIX semaphores (subclasses of
``_multiprocessing.SemLock``); ``Condition``, ``Event`` and ``Barrier`` are built from them.
Each object belongs to a context: under the fork start method its semaphore is unlinked as soon
as it is created (children inherit the open handle); under spawn and forkserver it keeps a name
``/pp-<random>`` so children can open it, the resource tracker learns the name (so it is
unlinked even if the whole process tree is SIGKILLed), and the creating process unlinks it when
the object is garbage collected or the process exits.

Like the stdlib, these objects reach other processes only by inheritance: as arguments of a
``Process`` (or in anything pickled while it starts); pickling them at any other time raises
``RuntimeError``.
"""

from __future__ import annotations

import _multiprocessing
import errno
import os
import secrets
import sys
import threading
import time

from . import context, process, reduction, util

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")

__all__ = [
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "Event", "Barrier",
    "BrokenBarrierError", "SEM_VALUE_MAX",
]

RECURSIVE_MUTEX = 0
SEMAPHORE = 1
SEM_VALUE_MAX: int = _multiprocessing.SemLock.SEM_VALUE_MAX

#: Prefix of polyproc's semaphore names; on Linux they show up as ``/dev/shm/sem.pp-*``.
SEM_PREFIX = "/pp-"

BrokenBarrierError = threading.BrokenBarrierError


def _resolve(ctx: Any) -> Any:
    return context._default_context.get_context() if ctx is None else ctx


def _unlink_semaphore(name: str) -> None:
    from ._resources import tracker

    try:
        _multiprocessing.sem_unlink(name)
    except FileNotFoundError:
        pass
    tracker.unregister(name, "semaphore")


def _semlock_after_fork(obj: SemLock) -> None:
    # A forked child owns none of its parent's locks, whatever the C object's count says.
    obj._after_fork()


def _rebuild_semlock(cls: type[SemLock], handle: int, kind: int, maxvalue: int,
                     name: str) -> SemLock:
    obj = cls._rebuild(handle, kind, maxvalue, name)
    obj._is_fork_ctx = False  # it has a name, so it can travel on to further children
    util.register_after_fork(obj, _semlock_after_fork)
    return obj


def _owner_name() -> str:
    name = process.current_process().name
    thread_name = threading.current_thread().name
    if thread_name != "MainThread":
        name += "|" + thread_name
    return name


class SemLock(_multiprocessing.SemLock):
    """Base of the semaphore-backed primitives: ``_multiprocessing.SemLock`` plus lifetime
    management (naming, unlinking, resource tracking, after-fork reset, pickling).

    Subclassing the C type (rather than wrapping it like the stdlib) makes ``acquire``,
    ``release`` and the ``with`` statement direct C calls:

    * ``acquire(block=True, timeout=None) -> bool``: block (up to ``timeout`` seconds) unless
      ``block`` is false; True if acquired.
    * ``release() -> None``: ``ValueError('semaphore or lock released too many times')`` past
      the maximum value; ``AssertionError`` for an RLock not owned by the calling thread.
    """

    _is_fork_ctx: bool

    def __new__(cls, kind: int, value: int, maxvalue: int, *, ctx: Any = None) -> SemLock:
        ctx = _resolve(ctx)
        is_fork_ctx = ctx.get_start_method() == "fork"
        for _ in range(100):
            name = SEM_PREFIX + secrets.token_hex(8)
            try:
                self = super().__new__(cls, kind, value, maxvalue, name, is_fork_ctx)
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                from ._resources import space

                raise space.full_error(e, f"a named semaphore for a {cls.__name__}") from e
            break
        else:
            raise FileExistsError("cannot find a free name for a semaphore")
        self._is_fork_ctx = is_fork_ctx
        util.register_after_fork(self, _semlock_after_fork)
        if self.name is not None:
            from ._resources import tracker

            tracker.register(self.name, "semaphore")
            util.Finalize(self, _unlink_semaphore, (self.name,), exitpriority=0)
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Everything happens in ``__new__``; this accepts a subclass's ``super().__init__``."""

    if TYPE_CHECKING:  # the C methods' signatures, for type checkers only
        def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...
        def release(self) -> None: ...
        def __enter__(self) -> bool: ...
        def __exit__(self, *args: object) -> None: ...

    @property
    def _semlock(self) -> SemLock:
        """The underlying C semaphore (this object; the stdlib's objects wrap one)."""
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        context.assert_spawning(self)
        if self._is_fork_ctx:
            raise RuntimeError(context.FORK_CONTEXT_SHARED)
        return _rebuild_semlock, (type(self), self.handle, self.kind, self.maxvalue, self.name)


class Semaphore(SemLock):
    """A counting semaphore shared between processes."""

    def __new__(cls, value: int = 1, *, ctx: Any = None) -> Semaphore:
        return super().__new__(cls, SEMAPHORE, value, SEM_VALUE_MAX, ctx=ctx)

    def get_value(self) -> int:
        """The current value (``NotImplementedError`` on macOS, as the stdlib)."""
        return self._get_value()

    def __repr__(self) -> str:
        try:
            value: object = self._get_value()
        except Exception:
            value = "unknown"
        return f"<{type(self).__name__}(value={value})>"


class BoundedSemaphore(Semaphore):
    """A semaphore whose value may not exceed its initial value: releasing it once too often
    raises ``ValueError('semaphore or lock released too many times')``."""

    def __new__(cls, value: int = 1, *, ctx: Any = None) -> BoundedSemaphore:
        return SemLock.__new__(cls, SEMAPHORE, value, value, ctx=ctx)

    def __repr__(self) -> str:
        try:
            value: object = self._get_value()
        except Exception:
            value = "unknown"
        return f"<{type(self).__name__}(value={value}, maxvalue={self.maxvalue})>"


class Lock(SemLock):
    """A non-recursive lock shared between processes (any process may release it)."""

    def __new__(cls, *, ctx: Any = None) -> Lock:
        return super().__new__(cls, SEMAPHORE, 1, 1, ctx=ctx)

    def __repr__(self) -> str:
        try:
            if self._is_mine():
                owner = _owner_name()
            elif self._get_value() == 1:
                owner = "None"
            elif self._count() > 0:
                owner = "SomeOtherThread"
            else:
                owner = "SomeOtherProcess"
        except Exception:
            owner = "unknown"
        return f"<{type(self).__name__}(owner={owner})>"


class RLock(SemLock):
    """A recursive lock shared between processes: only its owning thread may release it."""

    def __new__(cls, *, ctx: Any = None) -> RLock:
        return super().__new__(cls, RECURSIVE_MUTEX, 1, 1, ctx=ctx)

    def __repr__(self) -> str:
        count: object
        try:
            if self._is_mine():
                owner, count = _owner_name(), self._count()
            elif self._get_value() == 1:
                owner, count = "None", 0
            elif self._count() > 0:
                owner, count = "SomeOtherThread", "nonzero"
            else:
                owner, count = "SomeOtherProcess", "nonzero"
        except Exception:
            owner, count = "unknown", "unknown"
        return f"<{type(self).__name__}({owner}, {count})>"


class Condition:
    """A condition variable shared between processes (``threading.Condition``'s API).

    Waiters are counted with semaphores: ``_sleeping_count`` (went to sleep), ``_woken_count``
    (woke up, by notification or timeout) and ``_wait_semaphore`` (one token per notified
    waiter). ``notify`` waits until each waiter it woke has taken its token.
    """

    def __init__(self, lock: Lock | RLock | None = None, *, ctx: Any = None) -> None:
        ctx = _resolve(ctx)
        self._lock = lock if lock is not None else ctx.RLock()
        self._sleeping_count = ctx.Semaphore(0)
        self._woken_count = ctx.Semaphore(0)
        self._wait_semaphore = ctx.Semaphore(0)
        self._make_methods()

    def __getstate__(self) -> tuple[Any, ...]:
        context.assert_spawning(self)
        return (self._lock, self._sleeping_count, self._woken_count, self._wait_semaphore)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self._lock, self._sleeping_count, self._woken_count, self._wait_semaphore = state
        self._make_methods()

    def _make_methods(self) -> None:
        self.acquire = self._lock.acquire  # type: ignore[method-assign]
        self.release = self._lock.release  # type: ignore[method-assign]

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Acquire the underlying lock."""
        return self._lock.acquire(block, timeout)

    def release(self) -> None:
        """Release the underlying lock."""
        self._lock.release()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.__exit__(*args)

    def __repr__(self) -> str:
        try:
            waiters: object = (self._sleeping_count._semlock._get_value()
                               - self._woken_count._semlock._get_value())
        except Exception:
            waiters = "unknown"
        return f"<{type(self).__name__}({self._lock}, {waiters})>"

    def _check_owned(self, message: str) -> None:
        if not self._lock._semlock._is_mine():
            raise AssertionError(message)

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notification (or ``timeout``), reacquire the lock.

        Returns False if it timed out. ``AssertionError`` unless the lock is held.
        """
        self._check_owned("must acquire() condition before using wait()")
        self._sleeping_count.release()
        depth = self._lock._semlock._count()
        for _ in range(depth):
            self._lock.release()
        try:
            return self._wait_semaphore.acquire(True, timeout)
        finally:
            self._woken_count.release()
            for _ in range(depth):
                self._lock.acquire()

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters. ``AssertionError`` unless the lock is held."""
        self._check_owned("lock is not owned")
        if self._wait_semaphore.acquire(False):
            raise AssertionError(
                "notify: Should not have been able to acquire _wait_semaphore")
        # Waiters that timed out since the last notify woke without a token: forget them.
        while self._woken_count.acquire(False):
            if not self._sleeping_count.acquire(False):
                raise AssertionError("notify: Bug in sleeping_count.acquire"
                                     "- res should not be False")
        woken = 0
        while woken < n and self._sleeping_count.acquire(False):
            self._wait_semaphore.release()
            woken += 1
        if woken:
            for _ in range(woken):
                self._woken_count.acquire()
            # A waiter that timed out meanwhile left its token unused: take it back.
            while self._wait_semaphore.acquire(False):
                pass

    def notify_all(self) -> None:
        """Wake up every waiter."""
        self.notify(sys.maxsize)

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is true (or ``timeout``); return its last value."""
        result = predicate()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
            self.wait(remaining)
            result = predicate()
        return result


class Event:
    """An event flag shared between processes (``threading.Event``'s API)."""

    def __init__(self, *, ctx: Any = None) -> None:
        ctx = _resolve(ctx)
        self._cond = ctx.Condition(ctx.Lock())
        self._flag = ctx.Semaphore(0)  # value 1 while set

    def _peek(self) -> bool:
        if self._flag.acquire(False):
            self._flag.release()
            return True
        return False

    def is_set(self) -> bool:
        """Whether the flag is set."""
        with self._cond:
            return self._peek()

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        with self._cond:
            self._flag.acquire(False)
            self._flag.release()
            self._cond.notify_all()

    def clear(self) -> None:
        """Reset the flag."""
        with self._cond:
            self._flag.acquire(False)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set (or ``timeout``); return the flag."""
        with self._cond:
            if not self._peek():
                self._cond.wait(timeout)
            return self._peek()

    def __repr__(self) -> str:
        state = "set" if self.is_set() else "unset"
        return f"<{type(self).__qualname__} at {id(self):#x} {state}>"


class _SharedInts:
    """A few C ints in memory shared with child processes: an anonymous file (memfd) mapped
    ``MAP_SHARED``. Forked children inherit the mapping; spawned ones get the fd."""

    def __init__(self, count: int, fd: int | None = None) -> None:
        import mmap

        size = count * 4
        if fd is None:
            fd = _anonymous_file(size)
        self._fd = fd
        self._count = count
        self._map = mmap.mmap(fd, size)
        self.ints = memoryview(self._map).cast("i")
        util.Finalize(self, util.close_fds, (fd,))

    def __reduce__(self) -> tuple[Any, ...]:
        context.assert_spawning(self)
        return _rebuild_shared_ints, (self._count, reduction.DupFd(self._fd))


def _rebuild_shared_ints(count: int, dupfd: Any) -> _SharedInts:
    return _SharedInts(count, dupfd.detach())


def _anonymous_file(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("polyproc-barrier")
    else:
        import tempfile

        with tempfile.TemporaryFile(dir=util.get_temp_dir()) as f:
            fd = os.dup(f.fileno())
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Barrier(threading.Barrier):
    """A barrier for ``parties`` processes (``threading.Barrier``'s API).

    ``wait(timeout)`` returns an index in ``range(parties)``; the barrier's state lives in
    shared memory, guarded by a process ``Condition``.
    """

    def __init__(self, parties: int, action: Callable[[], object] | None = None,
                 timeout: float | None = None, *, ctx: Any = None) -> None:
        ctx = _resolve(ctx)
        self.__setstate__((parties, action, timeout, ctx.Condition(), _SharedInts(2)))
        self._state = 0
        self._count = 0

    def __getstate__(self) -> tuple[Any, ...]:
        context.assert_spawning(self)
        return (self._parties, self._action, self._timeout, self._cond, self._shared)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self._parties, self._action, self._timeout, self._cond, self._shared = state
        self._array = self._shared.ints

    # threading.Barrier keeps _state (0 filling, 1 draining, -1 resetting, -2 broken) and
    # _count as attributes; here they live in shared memory.
    @property
    def _state(self) -> int:
        return self._array[0]

    @_state.setter
    def _state(self, value: int) -> None:
        self._array[0] = value

    @property
    def _count(self) -> int:
        return self._array[1]

    @_count.setter
    def _count(self, value: int) -> None:
        self._array[1] = value
