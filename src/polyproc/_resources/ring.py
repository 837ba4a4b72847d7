"""A shared-memory ring buffer of messages: the machinery behind ``polyproc.queues``.

Layout
------
One anonymous ``memfd`` segment (no name anywhere, so nothing can leak: the kernel frees it when
the last process holding it exits) holds a 4 KiB header and the data area::

    0     magic, version, capacity
    64    tail, wwait               (the writers' cache line, polled by readers)
    128   head, n_got               (the readers' cache line)
    192   rwait, n_put              (rwait: set while a reader sleeps; read by writers)
    256   six unnamed process-shared POSIX semaphores (sem_t), 64 bytes apart:
          items, space, slots, unfinished, done, joiners
    640   the write lock and the read lock: robust process-shared pthread mutexes
    4096  data area (``capacity`` bytes)

``head`` and ``tail`` are byte positions that only grow; ``pos % capacity`` is the offset in the
data area. Records start on 64-byte cache lines (so a writer appending the next record never
writes the line a reader is reading): an 8-byte header ``(payload length, kind)`` then the
payload. A message is one ``WHOLE`` record, or, when larger than half the ring, a stream of
``FIRST``/``MIDDLE``/``LAST`` chunks written while the writer keeps the write lock. A record
never wraps around the end of the data area: the writer skips the rest with a ``WRAP`` record
(also used to go back to the start of the area when the ring is empty, so that a queue that
is drained as fast as it is filled touches only its first pages).

Protocol
--------
* A writer holds the write lock, writes a record past ``tail``, then stores the new ``tail``
  (the commit: a single aligned 8-byte store made after the payload is written), unlocks, and
  posts an ``items`` token if ``rwait`` says a reader sleeps. A writer killed at any point
  leaves the ring consistent: what it did not commit is invisible.
* A reader holds the read lock, reads the record at ``head`` if ``head != tail``, and stores
  the new ``head`` after it has finished with the payload. Otherwise it polls a little, then
  sets ``rwait``, issues a full barrier, looks at ``tail`` once more and sleeps on ``items``.
  The writer's unlock is a full barrier too (POSIX: mutex operations synchronize memory), so
  either the reader sees the new ``tail`` or the writer sees ``rwait`` (Dekker's handshake):
  no wake-up is lost. Only one reader can sleep at a time (it holds the read lock). The ring
  is the truth and tokens are only wake-up calls: a surplus token costs one spurious wake-up;
  a missing one (its writer died between commit and post) at most one wait slice. A message
  thus costs no semaphore operation at all while the reader keeps up or lags behind.
* Each side caches the other's position: positions only grow, so a writer's stale ``head``
  under-estimates the free space and a reader's stale ``tail`` the data ready; each re-reads
  the other's cache line only when its cached value says "no room" / "nothing ready".
* A writer that needs space sets ``wwait`` and waits on ``space``; readers post ``space`` after
  moving ``head`` when they see ``wwait`` set.
* The locks are robust mutexes (``PTHREAD_MUTEX_ROBUST``): when a process dies holding one, the
  kernel hands it to the next locker with ``EOWNERDEAD``, which repairs what the dead holder may
  have left half done (see ``_repair_writer``; chunks of a half-written or half-read stream
  are recognised and dropped by readers). Every blocking wait is cut into slices, so a
  lost wake-up costs a slice, never a hang, and Ctrl-C is seen.

Why robust pthread mutexes for the two locks (measured on the 2-core CI machine, per
lock + unlock pair): a ``SemLock`` costs ~0.1-0.2 us but is not robust (a process killed while
holding it blocks every other process forever); ``fcntl.flock`` and OFD byte-range locks are
robust (the kernel drops them when the holder dies) but cost a system call each way, ~1.4 us
and ~2.7 us; a ``PTHREAD_MUTEX_ROBUST`` mutex in the segment, locked with ``trylock`` through a
GIL-keeping ctypes prototype, costs ~0.4 us, is robust, and makes no system call when
uncontended. Blocking waits use ``pthread_mutex_timedlock`` (GIL released) in slices. The
counting semaphores are glibc ``sem_t`` initialised in the segment and driven through
``_multiprocessing.SemLock._rebuild`` (a C-speed wrapper around a ``sem_t *``).

Memory ordering: the commit protocol relies on stores becoming visible in program order (x86-64
TSO). Semaphore and mutex operations are full barriers there.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
import time
from _multiprocessing import SemLock

from .pshared import SLICE as _SLICE
from .pshared import TSO as _TSO
from .pshared import RobustMutex
from .pshared import check as _check
from .pshared import fence as _fence
from .pshared import mutex_trylock as _mutex_trylock
from .pshared import mutex_unlock as _mutex_unlock
from .pshared import sem_init as _sem_init
from .pshared import vp as _vp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Ring", "PickledBytes", "DEFAULT_CAPACITY", "SEM_VALUE_MAX"]

SEM_VALUE_MAX = SemLock.SEM_VALUE_MAX
_SEMAPHORE = 1  # SemLock kind

#: Default size of a queue's data area. Pages are only allocated when first written, and an
#: empty ring restarts at the beginning, so a queue that is drained as fast as it is filled
#: uses only its first pages.
DEFAULT_CAPACITY = 4 * 1024 * 1024
_MIN_CAPACITY = 4096

_MAGIC = 0x636F7270796C6F70  # b"polyproc" little-endian
_VERSION = 2

_OFF_MAGIC = 0
_OFF_TAIL = 64  # tail, wwait
_OFF_WWAIT = 80
_OFF_HEAD = 128  # head, n_got
_OFF_RWAIT = 192  # rwait, n_put: n_put is not beside tail, which a polling reader reads
_OFF_SEMS = 256
_SEM_NAMES = ("items", "space", "slots", "unfinished", "done", "joiners")
_OFF_WLOCK = 640
_OFF_RLOCK = 704
_DATA = 4096

_WHOLE, _FIRST, _MIDDLE, _LAST, _WRAP = 0, 1, 2, 3, 4

#: Messages up to this size are copied out of the ring and unpickled after the read lock is
#: released; larger ones are unpickled straight from the shared memory, saving a copy.
_COPY_LIMIT = 64 * 1024
#: When the ring is empty and ``tail`` is past this offset, the next record starts again at 0.
_RESTART_AT = 64 * 1024

_HDR = struct.Struct("<QQQ")

# ---------------------------------------------------------------- the ring

# Indexes of the header's 8-byte words (``Ring.hq`` is the segment seen as an array of u64).
_I_TAIL, _I_WWAIT = _OFF_TAIL // 8, _OFF_WWAIT // 8
_I_HEAD, _I_NGOT = _OFF_HEAD // 8, _OFF_HEAD // 8 + 1
_I_RWAIT, _I_NPUT = _OFF_RWAIT // 8, _OFF_RWAIT // 8 + 1
_KIND_SHIFT = 32  # a record header word is ``length | kind << 32``
_LEN_MASK = (1 << 32) - 1
#: Times a reader polls an empty ring before it sleeps (a sleep costs the writer a wake-up).
_SPIN = 50


def _repairer(hq: Any, items: Any, writer: bool) -> Callable[[], None]:
    """What to do on taking over the write (``writer``) or read lock from a dead owner."""
    if writer:
        def repair() -> None:
            # The dead writer may have committed a record without posting its token: post
            # one (a surplus token only costs a spurious wake-up). A stream it left
            # unfinished is dropped by the reader when the next message starts or when it
            # finds the write lock free.
            hq[_I_WWAIT] = 0
            items.release()
    else:
        def repair() -> None:
            # The dead reader never moved head past a record it had not finished; the rest
            # of a stream it had half read is skipped by the next reader. It may have died
            # asleep.
            hq[_I_RWAIT] = 0
    return repair


class Ring:
    """One ring segment as mapped in this process (see the module docstring).

    ``put_nowait``/``write`` need the write lock held by the caller (``wlock``); ``try_send``
    and the functions made by ``make_get`` take the locks themselves.
    """

    def __init__(self, fd: int, capacity: int, initialize: bool, maxsize: int = 0) -> None:
        self.fd = fd
        self.capacity = capacity
        self.max_whole = capacity // 2 - 8  # largest payload sent as one record
        self.chunk = capacity // 4  # payload bytes per streamed chunk
        self.mm = mm = mmap.mmap(fd, _DATA + capacity)
        self.hq = memoryview(mm).cast("Q")  # aligned 8-byte loads and stores
        self._anchor = ctypes.c_char.from_buffer(mm)  # keeps the mapping alive while used
        base = ctypes.addressof(self._anchor)
        if initialize:
            _HDR.pack_into(mm, _OFF_MAGIC, _MAGIC, _VERSION, capacity)
            for i, name in enumerate(_SEM_NAMES):
                value = maxsize if name == "slots" else 0
                _check(_sem_init(_vp(base + _OFF_SEMS + 64 * i), 1, value))
            RobustMutex.initialize(base + _OFF_WLOCK)
            RobustMutex.initialize(base + _OFF_RLOCK)
        else:
            magic, version, cap = _HDR.unpack_from(mm, _OFF_MAGIC)
            if magic != _MAGIC or version != _VERSION or cap != capacity:
                raise ValueError("not a polyproc queue segment")
        sems = {}
        for i, name in enumerate(_SEM_NAMES):
            sems[name] = SemLock._rebuild(base + _OFF_SEMS + 64 * i, _SEMAPHORE,
                                          SEM_VALUE_MAX, None)
        self.items: Any = sems["items"]
        self.space: Any = sems["space"]
        self.slots: Any = sems["slots"]
        self.unfinished: Any = sems["unfinished"]
        self.done: Any = sems["done"]
        self.joiners: Any = sems["joiners"]
        # No callable kept by the ring may hold the ring itself: a reference cycle would keep
        # its fds (the memfd and mmap's copy of it) open until the cyclic GC runs, so a
        # program making queues in a loop could run out of fds where the stdlib's would not.
        self.wlock = RobustMutex(base + _OFF_WLOCK, _repairer(self.hq, self.items, True))
        self.rlock = RobustMutex(base + _OFF_RLOCK, _repairer(self.hq, self.items, False))
        self.put_nowait = self._make_put_nowait()
        self.try_send = self._make_try_send()

    # -- making and passing ---------------------------------------------------------------

    @classmethod
    def create(cls, capacity: int = DEFAULT_CAPACITY, maxsize: int = 0) -> Ring:
        """A new ring on a fresh anonymous memfd (``maxsize`` initializes the slots)."""
        capacity = max(_MIN_CAPACITY, (int(capacity) + 4095) // 4096 * 4096)
        fd = os.memfd_create("polyproc-queue", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _DATA + capacity)
            return cls(fd, capacity, True, maxsize)
        except BaseException:
            os.close(fd)
            raise

    def __reduce__(self) -> tuple[Any, ...]:
        from .. import _spawning, reduction

        _spawning.assert_spawning(self)
        return _attach, (reduction.DupFd(self.fd), self.capacity)

    def __del__(self, _close: Callable[[int], None] = os.close) -> None:
        # ``_close`` is bound now: a ring freed at interpreter exit may find ``os`` gone.
        fd, self.fd = getattr(self, "fd", -1), -1
        if fd >= 0:
            try:
                _close(fd)
            except OSError:
                pass

    # -- recovery -----------------------------------------------------------------------------

    def _repair_writer(self) -> None:
        _repairer(self.hq, self.items, True)()

    def _repair_reader(self) -> None:
        _repairer(self.hq, self.items, False)()

    # -- state --------------------------------------------------------------------------------

    def counts(self) -> tuple[int, int]:
        """(messages committed, messages consumed) so far."""
        hq = self.hq
        return hq[_I_NPUT], hq[_I_NGOT]

    def empty(self) -> bool:
        """True if no committed byte is waiting to be read."""
        hq = self.hq
        return hq[_I_HEAD] == hq[_I_TAIL]

    def writer_waiting(self) -> bool:
        """True while the write lock's holder waits for space (or streams)."""
        return self.hq[_I_WWAIT] != 0

    # -- writing (the caller holds the write lock) ---------------------------------------------

    def _make_put_nowait(self) -> Callable[[Any], bool]:
        mm = self.mm
        hq = self.hq
        cap = self.capacity
        max_whole = self.max_whole
        head_seen = 0  # the readers' position as last read here (only grows)

        def put_nowait(data: Any) -> bool:
            """Append ``data`` as one message if the ring has room now; False otherwise.

            The caller holds the write lock, and after unlocking posts an ``items`` token if
            a reader sleeps (``rwait``).
            """
            nonlocal head_seen
            n = len(data)
            if n > max_whole:
                return False
            need = (n + 71) & ~63
            tail = hq[_I_TAIL]
            off = tail % cap
            rem = cap - off
            span = need if need <= rem else rem + need  # with the skipped end, if it wraps
            if tail + span - head_seen > cap:
                head_seen = hq[_I_HEAD]
                if tail + span - head_seen > cap:
                    return False
            if need > rem:
                wrap = True
            elif off >= _RESTART_AT and need <= off and (off & 4095) < need:
                # Once per page written: if the ring is empty, go back to its start.
                head_seen = hq[_I_HEAD]
                wrap = head_seen == tail
            else:
                wrap = False
            if wrap:
                hq[(_DATA + off) >> 3] = (rem - 8) | _WRAP << _KIND_SHIFT
                tail += rem
                off = 0
            start = _DATA + off
            hq[start >> 3] = n  # kind _WHOLE
            if type(data) is PickledBytes:
                data.write_into(mm, start + 8)
            else:
                mm[start + 8:start + 8 + n] = data
            hq[_I_NPUT] += 1
            hq[_I_TAIL] = tail + need  # the commit
            return True

        return put_nowait

    def _make_try_send(self) -> Callable[[Any, float], bool]:
        max_whole = self.max_whole
        wlock = self.wlock
        wptr = wlock.ptr
        acquire_after = wlock.acquire_after
        items_release = self.items.release

        def writer_waiting() -> bool:  # as the method, without a reference to the ring
            return hq[_I_WWAIT] != 0

        hq = self.hq
        always_post = not _TSO
        trylock = _mutex_trylock
        unlock = _mutex_unlock
        put_nowait = self.put_nowait

        def try_send(data: Any, patience: float) -> bool:
            """Take the write lock (waiting at most ``patience`` seconds, and not at all while
            its holder waits for space), append ``data`` as one message if it fits now, and
            wake a sleeping reader. False if the message was not written."""
            n = len(data)
            if n > max_whole:
                return False
            r = trylock(wptr)
            if r and not acquire_after(r, True, patience, writer_waiting):
                return False
            try:
                if not put_nowait(data):  # the one copy of the commit protocol
                    return False
            finally:
                unlock(wptr)  # a full barrier: the commit is visible before rwait is read
            if always_post or hq[_I_RWAIT]:
                items_release()
            return True

        return try_send

    def write(self, data: Any) -> None:
        """Append ``data`` as one message, waiting for space and streaming it in chunks if it
        is larger than half the ring. Holds the write lock; wakes a sleeping reader itself."""
        if len(data) <= self.max_whole:
            if not self.put_nowait(data):
                self._wait_space((len(data) + 71) & ~63)
                if not self.put_nowait(data):  # pragma: no cover - _wait_space guarantees it
                    raise RuntimeError("queue ring: no space after waiting")
            self._wake_reader()
            return
        if type(data) is PickledBytes:
            data = bytes(data)
        hq = self.hq
        hq[_I_WWAIT] = 1  # tells other writers not to wait for the lock
        try:
            self._stream(memoryview(data).cast("B"))
        finally:
            hq[_I_WWAIT] = 0

    def _stream(self, view: memoryview) -> None:
        mm = self.mm
        hq = self.hq
        cap = self.capacity
        total = len(view)
        pos = 0
        first = True
        while pos < total:
            c = min(total - pos, self.chunk)
            if first:
                kind, plen = _FIRST, c + 8
            else:
                kind, plen = (_LAST if pos + c == total else _MIDDLE), c
            need = (plen + 71) & ~63
            self._wait_space(need)
            tail = hq[_I_TAIL]
            off = tail % cap
            rem = cap - off
            if need > rem:
                hq[(_DATA + off) >> 3] = (rem - 8) | _WRAP << _KIND_SHIFT
                tail += rem
                off = 0
            start = _DATA + off
            hq[start >> 3] = plen | kind << _KIND_SHIFT
            s = start + 8
            if first:
                hq[s >> 3] = total
                s += 8
            mm[s:s + c] = view[pos:pos + c]
            if kind == _LAST:
                hq[_I_NPUT] += 1
            hq[_I_TAIL] = tail + need  # the commit
            self._wake_reader()
            pos += c
            first = False

    def _wake_reader(self) -> None:
        """After a commit made holding the write lock: post a token if a reader sleeps."""
        _fence()  # the commit must be visible before rwait is read (Dekker's handshake)
        if self.hq[_I_RWAIT] or not _TSO:
            self.items.release()

    def _room(self, need: int) -> bool:
        hq = self.hq
        cap = self.capacity
        tail = hq[_I_TAIL]
        rem = cap - tail % cap
        total = need if need <= rem else rem + need
        return tail + total - hq[_I_HEAD] <= cap

    def _wait_space(self, need: int) -> None:
        """Wait (holding the write lock) until a record of ``need`` bytes fits."""
        if self._room(need):
            return
        hq = self.hq
        space = self.space
        was_set = hq[_I_WWAIT]
        hq[_I_WWAIT] = 1
        try:
            _fence()  # readers must see the flag, or we see their head
            while not self._room(need):
                space.acquire(True, _SLICE)
        finally:
            if not was_set:
                hq[_I_WWAIT] = 0

    # -- reading ----------------------------------------------------------------------------

    def make_get(self, loads: Callable[[Any], Any], empty: type[Exception],
                 consumed: Callable[[], Any] | None = None) -> Callable[..., Any]:
        """Return ``get(block=True, timeout=None)``: take one message, return
        ``loads(payload)``; raise ``empty`` if none arrives (``block=False``: none is there
        now; else within ``timeout`` seconds, None: ever). ``consumed()`` is called once the
        message has left the ring, before it is unpickled."""
        mm = self.mm
        hq = self.hq
        cap = self.capacity
        rlock = self.rlock
        rptr = rlock.ptr
        acquire_after = rlock.acquire_after
        space_release = self.space.release
        get_slow = self._get_slow
        trylock = _mutex_trylock
        unlock = _mutex_unlock
        monotonic = time.monotonic
        tail_seen = 0  # the writers' position as last read here (only grows)

        def get(block: bool = True, timeout: float | None = None) -> Any:
            nonlocal tail_seen
            r = trylock(rptr)
            deadline = None
            if r:
                if block and timeout is not None:
                    deadline = monotonic() + max(timeout, 0.0)
                if not acquire_after(r, block, timeout):
                    raise empty
            try:
                head = hq[_I_HEAD]
                if head < tail_seen or head < (tail_seen := hq[_I_TAIL]):
                    off = head % cap
                    n = hq[(_DATA + off) >> 3]
                    if n <= _COPY_LIMIT:  # a _WHOLE record (other kinds have high bits set)
                        s = _DATA + 8 + off
                        data = mm[s:s + n]
                        hq[_I_NGOT] += 1
                        hq[_I_HEAD] = head + ((n + 71) & ~63)
                        loaded = False
                    else:
                        loaded, data = get_slow(block, timeout, deadline, loads, empty)
                else:
                    loaded, data = get_slow(block, timeout, deadline, loads, empty)
            finally:
                unlock(rptr)
            if hq[_I_WWAIT]:
                space_release()
            if consumed is not None:
                consumed()
            if loaded:
                if type(data) is _Failed:
                    raise data.exc
                return data
            return loads(data)

        return get

    def _sleep(self, wait: float) -> bool:
        """Wait (holding the read lock) at most ``wait`` seconds for a writer's commit; False
        if none came. Sets ``rwait`` so that writers post a token (see the module doc)."""
        hq = self.hq
        hq[_I_RWAIT] = 1
        try:
            _fence()  # rwait must be visible before tail is read (Dekker's handshake)
            if hq[_I_HEAD] != hq[_I_TAIL]:
                return True
            return self.items.acquire(True, wait)
        finally:
            hq[_I_RWAIT] = 0

    def _get_slow(self, block: bool, timeout: float | None, deadline: float | None,
                  loads: Callable[[Any], Any], empty: type[Exception]) -> tuple[bool, Any]:
        """Read one message holding the read lock: waits, wraps, streams, stale chunks."""
        mm = self.mm
        hq = self.hq
        cap = self.capacity
        stream: bytearray | None = None
        spos = 0
        spin = _SPIN if block else 0
        if block and timeout is not None and deadline is None:
            deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            head = hq[_I_HEAD]
            if head == hq[_I_TAIL]:
                if spin:
                    spin -= 1
                    continue
                if stream is not None:
                    # In the middle of a message: wait for its next chunk whatever the
                    # timeout, but notice if its writer died or gave up.
                    if not self._sleep(_SLICE) and self._stream_abandoned():
                        stream = None
                    continue
                if not block:
                    raise empty
                wait = _SLICE
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise empty
                    wait = min(wait, remaining)
                self._sleep(wait)
                continue
            off = head % cap
            word = hq[(_DATA + off) >> 3]
            n = word & _LEN_MASK
            kind = word >> _KIND_SHIFT
            if kind == _WRAP:
                hq[_I_HEAD] = head + cap - off
                continue
            s = _DATA + off + 8
            size = (n + 71) & ~63
            result: Any = None
            done = False
            if kind == _WHOLE:
                stream = None  # a stream interrupted by a new message was abandoned
                done = True
                if n <= _COPY_LIMIT:
                    result = (False, mm[s:s + n])
                else:
                    view = memoryview(mm)[s:s + n]
                    try:
                        result = (True, loads(view))
                    except BaseException as exc:  # raised after the message is consumed
                        result = (True, _Failed(exc))
                    finally:
                        view.release()
            elif kind == _FIRST:
                total = hq[s >> 3]
                stream = bytearray(total)
                c = n - 8
                stream[0:c] = mm[s + 8:s + 8 + c]
                spos = c
            elif stream is None:  # _MIDDLE/_LAST of a stream whose first part is gone
                pass
            else:
                stream[spos:spos + n] = mm[s:s + n]
                spos += n
                if kind == _LAST:
                    done = True
                    result = (False, stream)
                    stream = None
            if kind == _WHOLE or kind == _LAST:
                hq[_I_NGOT] += 1
            hq[_I_HEAD] = head + size
            if stream is not None:
                # Mid-stream the writer holds the write lock waiting for space: tell it at
                # once (get() does so only once the whole message is read).
                _fence()
                if hq[_I_WWAIT]:
                    self.space.release()
            if done:
                return result

    def _stream_abandoned(self) -> bool:
        """True if the writer of the stream being read is gone (or gave up) for good."""
        wlock = self.wlock
        if not wlock.acquire(False):
            return False  # its writer still holds the write lock
        try:
            return self.empty()
        finally:
            wlock.release()


class PickledBytes:
    """The pickle of a large ``bytes`` object kept as (opcode prefix, the object, suffix), so
    that it is copied once, straight into the ring, instead of first into a pickle buffer.
    ``pickle.loads`` of the bytes written gives back an equal ``bytes``."""

    __slots__ = ("head", "body", "size")

    def __init__(self, body: bytes) -> None:
        n = len(body)
        if n < 1 << 32:
            self.head = b"\x80\x05B" + n.to_bytes(4, "little")  # PROTO 5, BINBYTES
        else:
            self.head = b"\x80\x05\x8e" + n.to_bytes(8, "little")  # PROTO 5, BINBYTES8
        self.body = body
        self.size = len(self.head) + n + 2

    def __len__(self) -> int:
        return self.size

    def write_into(self, mm: mmap.mmap, pos: int) -> None:
        """Write the pickle at ``mm[pos:pos + len(self)]``."""
        head = self.head
        end = pos + len(head)
        mm[pos:end] = head
        pos, end = end, end + len(self.body)
        mm[pos:end] = self.body
        mm[end:end + 2] = b"\x94."  # MEMOIZE, STOP

    def __bytes__(self) -> bytes:
        return self.head + self.body + b"\x94."


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _attach(dupfd: Any, capacity: int) -> Ring:
    """Unpickle a ring in a child: map the segment whose fd came with the process."""
    return Ring(dupfd.detach(), capacity, False)
