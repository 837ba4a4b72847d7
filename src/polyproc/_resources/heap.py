"""Shared-memory arenas and the block allocator behind ``polyproc.sharedctypes``.

An *arena* is anonymous shared memory: an ``os.memfd_create`` fd (an unlinked temporary file
where memfd is missing) mapped with ``MAP_SHARED``. It has no name, so nothing it holds can
outlive the processes that map it or show up in ``/dev/shm``.

* fork children inherit the mapping itself;
* spawn and forkserver children get the arena's fd through ``reduction.DupFd`` when an object
  living in it is pickled while the child starts, and map it once: arenas are cached per
  process by an id, so two objects of one arena share one mapping.

Each process allocates only from arenas it created itself. A forked child starts with an
empty allocator (its parent's arenas stay mapped for the objects it inherited), so parent and
child never hand out the same bytes. Small blocks come from 1 MiB arenas through a first-fit
free list that coalesces neighbours; a large block gets an arena of its own, dropped (fd closed,
memory returned) once the block is freed and nothing maps it any more.
"""

from __future__ import annotations

import bisect
import itertools
import mmap
import os
import threading
import weakref

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

    #: A block: (arena, start, stop), offsets in bytes from the start of the arena.
    Block = tuple["Arena", int, int]

__all__ = ["Arena", "BufferWrapper", "Heap", "heap"]

ALIGNMENT = 16  # enough for every ctypes scalar, long double included
ARENA_SIZE = 1 << 20  # pages of an arena are only backed once touched
LARGE_BLOCK = ARENA_SIZE // 4  # blocks this big or bigger get an arena of their own
_PAGE = mmap.PAGESIZE

_ids = itertools.count()
_token = os.urandom(6).hex()  # makes arena ids unique across processes (pid reuse included)


def _roundup(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _anonymous_fd(size: int) -> int:
    """A close-on-exec fd for ``size`` bytes of nameless shared memory."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("polyproc-heap", os.MFD_CLOEXEC)
    else:  # pragma: no cover - platforms without memfd (macOS, BSDs)
        import tempfile

        from .. import util

        fd, path = tempfile.mkstemp(prefix="pp-heap-", dir=util.get_temp_dir())
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------- arenas

#: Arenas mapped in this process, by id: creators' and rebuilt ones (weak, so unused ones go).
_arena_cache: weakref.WeakValueDictionary[str, Arena] = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()

#: Per process being started: the DupFd already made for each arena id (one fd per arena).
_spawning_fds: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class Arena:
    """``size`` bytes of anonymous shared memory, mapped read/write in this process.

    Pickling (done while a child process starts) sends the fd along; the child maps the same
    memory, once per arena however many objects of it it receives.
    """

    def __init__(self, size: int, fd: int = -1, ident: str | None = None) -> None:
        if size <= 0:
            raise ValueError("arena size must be positive")
        self.size = size
        self.ident = ident if ident is not None else f"{os.getpid()}-{_token}-{next(_ids)}"
        self.fd = _anonymous_fd(size) if fd < 0 else fd
        try:
            self.buffer = mmap.mmap(self.fd, size)  # MAP_SHARED, read/write
        except BaseException:
            if fd < 0:
                os.close(self.fd)
            raise
        # The fd stays open while the arena is alive: children started later need it.
        # (mypy 1.18 to 2.3 misread the stubs' finalize.atexit as not settable: ignored there.)
        weakref.finalize(self, _close_fd, self.fd).atexit = False  # type: ignore[misc, unused-ignore]
        with _cache_lock:
            _arena_cache[self.ident] = self

    def __reduce__(self) -> tuple[Any, ...]:
        from .. import _spawning, reduction

        popen = _spawning.get_spawning_popen()
        if popen is None:
            return _rebuild_arena, (self.size, self.ident, reduction.DupFd(self.fd))
        try:
            sent = _spawning_fds[popen]
        except (KeyError, TypeError):
            sent = {}
            try:
                _spawning_fds[popen] = sent
            except TypeError:  # a Popen that can't be weakly referenced: no memo
                pass
        dup = sent.get(self.ident)
        if dup is None:
            dup = sent[self.ident] = reduction.DupFd(self.fd)
        return _rebuild_arena, (self.size, self.ident, dup)

    def __repr__(self) -> str:
        return f"<Arena {self.ident} size={self.size} fd={self.fd}>"


def _rebuild_arena(size: int, ident: str, dupfd: Any) -> Arena:
    """Map an arena received from another process (reusing this process's mapping if any)."""
    fd = dupfd.detach()
    with _cache_lock:
        arena = _arena_cache.get(ident)
    if arena is not None:
        if fd != arena.fd:  # a second copy of an fd we already hold
            _close_fd(fd)
        return arena
    return Arena(size, fd, ident)


# ---------------------------------------------------------------- allocator

class Heap:
    """Allocates blocks of this process's arenas; thread safe and reset in forked children."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._small: list[Arena] = []  # arenas that serve small blocks, oldest first
        self._free: dict[Arena, list[tuple[int, int]]] = {}  # sorted free (start, stop) runs
        self._used: dict[Arena, int] = {}  # live blocks per arena this process owns
        self._avail: dict[Arena, int] = {}  # free bytes per small arena (skips full ones fast)
        self._pending: list[Block] = []  # frees that found the lock taken (e.g. during GC)

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked without the at-fork hook having run
            self._reset()

    def malloc(self, size: int) -> Block:
        """Return a block ``(arena, start, stop)`` of at least ``size`` bytes, aligned."""
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, not {type(size).__name__}")
        if size < 0:
            raise ValueError(f"size must be non-negative, not {size}")
        self._check_pid()
        size = _roundup(max(size, 1), ALIGNMENT)
        with self._lock:
            self._free_pending()
            if size >= LARGE_BLOCK:
                arena = Arena(_roundup(size, _PAGE))
                self._used[arena] = 1
                return (arena, 0, size)
            return self._malloc_small(size)

    def _malloc_small(self, size: int) -> Block:
        avail = self._avail
        for arena in self._small:
            if avail[arena] < size:
                continue
            runs = self._free[arena]
            for i, (start, stop) in enumerate(runs):
                if stop - start >= size:
                    if stop - start == size:
                        del runs[i]
                    else:
                        runs[i] = (start + size, stop)
                    self._used[arena] += 1
                    avail[arena] -= size
                    return (arena, start, start + size)
        arena = Arena(ARENA_SIZE)
        self._small.append(arena)
        self._free[arena] = [(size, ARENA_SIZE)]
        self._used[arena] = 1
        avail[arena] = ARENA_SIZE - size
        return (arena, 0, size)

    def free(self, block: Block) -> None:
        """Give ``block`` back (a block of another process's allocator is ignored)."""
        if self._pid != os.getpid():
            return
        # Called from finalizers, maybe by GC inside malloc in this very thread: never block.
        if not self._lock.acquire(False):
            self._pending.append(block)
            return
        try:
            self._free_pending()
            self._free_block(block)
        finally:
            self._lock.release()

    def _free_pending(self) -> None:
        while self._pending:
            self._free_block(self._pending.pop())

    def _free_block(self, block: Block) -> None:
        arena, start, stop = block
        count = self._used.get(arena)
        if count is None:
            return  # not ours (inherited from a parent, or already dropped)
        if arena not in self._free:  # a dedicated arena for one large block
            del self._used[arena]
            return
        self._used[arena] = count - 1
        self._avail[arena] += stop - start
        runs = self._free[arena]
        i = bisect.bisect_left(runs, (start, stop))
        if i < len(runs) and runs[i][0] == stop:  # merge with the next run
            stop = runs.pop(i)[1]
        if i > 0 and runs[i - 1][1] == start:  # merge with the previous run
            i -= 1
            start = runs.pop(i)[0]
        runs.insert(i, (start, stop))
        if count == 1 and len(self._small) > 1:  # empty, and not the last arena: drop it
            self._small.remove(arena)
            del self._free[arena], self._used[arena], self._avail[arena]

    def _stats(self) -> dict[str, int]:
        """Allocator state for tests: arenas and live blocks this process owns."""
        with self._lock:
            return {
                "small_arenas": len(self._small),
                "large_arenas": len(self._used) - len(self._small),
                "blocks": sum(self._used.values()),
            }


heap = Heap()


def _after_fork_in_child() -> None:
    heap._reset()
    global _cache_lock
    _cache_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------- buffers


def _free_block(block: Block) -> None:
    heap.free(block)


class BufferWrapper:
    """A block of shared memory owned by one object: freed when the wrapper is collected.

    Pickles as its block (arena, offsets) and size; the copy in another process does not free.
    """

    def __init__(self, size: int) -> None:
        from .. import util

        block = heap.malloc(size)
        self._state = (block, size)
        util.Finalize(self, _free_block, args=(block,))

    def create_memoryview(self) -> memoryview:
        """A writable view of exactly the ``size`` bytes of the block."""
        (arena, start, _stop), size = self._state
        return memoryview(arena.buffer)[start:start + size]

    def __getstate__(self) -> dict[str, Any]:
        return {"_state": self._state}
