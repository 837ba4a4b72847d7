"""Process-shared POSIX primitives in shared memory, driven through ctypes: robust pthread
mutexes (``RobustMutex``), ``sem_init`` for unnamed semaphores, and a full memory fence.
The queues' ring (``ring.py``) is built on them; its module doc says why these.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["RobustMutex", "check", "fence", "mutex_trylock", "mutex_unlock", "sem_init", "vp",
           "SLICE"]

#: Longest single wait (seconds) before re-checking the ring, signals and dead peers.
SLICE = 0.1




class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(None, use_errno=True)
vp = ctypes.c_void_p


def _cfunc(name: str, *argtypes: Any) -> Any:
    fn = getattr(_libc, name)
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    return fn


_pylibc = ctypes.PyDLL(None)


def _fastfunc(name: str) -> Any:
    """``int name(void *)`` called without releasing the GIL: for calls that never block,
    this halves the cost of a ctypes call."""
    return ctypes.PYFUNCTYPE(ctypes.c_int, vp)((name, _pylibc))


mutex_trylock = _fastfunc("pthread_mutex_trylock")
mutex_unlock = _fastfunc("pthread_mutex_unlock")
_mutex_consistent = _fastfunc("pthread_mutex_consistent")
_mutex_timedlock = _cfunc("pthread_mutex_timedlock", vp, ctypes.POINTER(_Timespec))  # blocks
_mutex_init = _cfunc("pthread_mutex_init", vp, vp)
_mutexattr_init = _cfunc("pthread_mutexattr_init", vp)
_mutexattr_setpshared = _cfunc("pthread_mutexattr_setpshared", vp, ctypes.c_int)
_mutexattr_setrobust = _cfunc("pthread_mutexattr_setrobust", vp, ctypes.c_int)
_mutexattr_destroy = _cfunc("pthread_mutexattr_destroy", vp)
sem_init = _cfunc("sem_init", vp, ctypes.c_int, ctypes.c_uint)

_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1
_EBUSY = errno.EBUSY
_ETIMEDOUT = errno.ETIMEDOUT
_EOWNERDEAD = errno.EOWNERDEAD

#: The wake-up handshake (module doc) needs the commit store and the ``rwait`` load not to be
#: reordered; mutex and lock operations are full barriers on x86 (TSO). Elsewhere writers
#: post a token for every message, whether a reader sleeps or not.
TSO = os.uname().machine.lower() in ("x86_64", "amd64", "i386", "i686")

_fence_lock = threading.Lock()


def _reinit_fence_lock() -> None:
    global _fence_lock
    _fence_lock = threading.Lock()  # a fork child must not inherit it held by another thread


os.register_at_fork(after_in_child=_reinit_fence_lock)


def fence() -> None:
    """A full memory barrier (a locked instruction), for the wwait/head handshake."""
    _fence_lock.acquire()
    _fence_lock.release()


class RobustMutex:
    """A process-shared robust pthread mutex living in shared memory.

    ``acquire`` returns True once the caller owns the mutex; if its previous owner died while
    holding it, ``on_recover()`` runs first (the kernel hands the mutex over with EOWNERDEAD).
    Waits are cut into slices so that signals are handled while waiting.
    """

    __slots__ = ("ptr", "_on_recover")

    def __init__(self, address: int, on_recover: Callable[[], None]) -> None:
        self.ptr = address
        self._on_recover = on_recover

    @staticmethod
    def initialize(address: int) -> None:
        """Make the memory at ``address`` an unlocked process-shared robust mutex."""
        attr = ctypes.create_string_buffer(64)
        check(_mutexattr_init(attr))
        try:
            check(_mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED))
            check(_mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST))
            check(_mutex_init(vp(address), attr))
        finally:
            _mutexattr_destroy(attr)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Lock; False if not possible without blocking / within ``timeout`` seconds."""
        r = mutex_trylock(self.ptr)
        if r == 0:
            return True
        return self.acquire_after(r, block, timeout)

    def acquire_after(self, r: int, block: bool = True, timeout: float | None = None,
                      give_up: Callable[[], bool] | None = None) -> bool:
        """Slow path of ``acquire`` once a trylock returned ``r``.

        ``give_up()``, if given, is asked between slices whether to stop waiting.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        ts = _Timespec()
        while True:
            if r == 0:
                return True
            if r == _EOWNERDEAD:
                _mutex_consistent(self.ptr)
                try:
                    self._on_recover()
                except BaseException:
                    mutex_unlock(self.ptr)
                    raise
                return True
            if r not in (_EBUSY, _ETIMEDOUT):
                raise OSError(r, "pthread_mutex_lock: " + os.strerror(r))
            if not block or (give_up is not None and give_up()):
                return False
            wait = SLICE
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            t = time.time() + wait
            sec = int(t)
            ts.tv_sec = sec
            ts.tv_nsec = min(int((t - sec) * 1e9), 999_999_999)
            r = _mutex_timedlock(self.ptr, ctypes.byref(ts))

    def release(self) -> None:
        """Unlock (the caller must own the mutex)."""
        r = mutex_unlock(self.ptr)
        if r:
            raise RuntimeError("releasing a queue lock not owned: " + os.strerror(r))


def check(r: int) -> None:
    if r:
        raise OSError(r, os.strerror(r))
