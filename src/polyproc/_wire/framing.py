"""Length-prefixed frames on a file descriptor.

The wire format is the one CPython's ``multiprocessing.connection`` uses on
POSIX, so either side of a pipe or socket may be the stdlib: a 4-byte
big-endian signed length, then the payload.  Payloads longer than
``0x7fffffff`` bytes are announced by a length of ``-1`` followed by an 8-byte
big-endian unsigned length.

Reads never consume bytes beyond the end of the current frame, so readiness
reported by ``poll()``/``select()`` on the descriptor stays truthful between
frames.  All functions work on blocking descriptors; ``EINTR`` is retried by
the ``os`` functions themselves (PEP 475).
"""

from __future__ import annotations

import os
import struct
import sys

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from typing import Any

    from typing_extensions import Buffer

__all__ = [
    "MAX_SHORT_LENGTH",
    "PREALLOCATE_LIMIT",
    "BadMessageLength",
    "read_frame",
    "read_growing",
    "read_into",
    "read_length",
    "read_payload",
    "write_frame",
]

_HEADER = struct.Struct("!i")
_EXTENDED_HEADER = struct.Struct("!iQ")
_EXTENDED_LENGTH = struct.Struct("!Q")

#: Largest payload whose length fits the short (4-byte) header.
MAX_SHORT_LENGTH = 0x7FFFFFFF

#: A payload up to this size gets its whole buffer at once.  A longer one gets a buffer that
#: grows (doubling) as its bytes arrive, so a header that announces gigabytes and sends little
#: costs only what is really sent, never the announced length up front.
PREALLOCATE_LIMIT = 1 << 20

# Growing buffers are private anonymous mappings where mremap() grows them in place (Linux).
_GROW_IN_PLACE = sys.platform.startswith("linux")

# Up to this size, copying the payload behind the header so that a single
# write() suffices is cheaper than the bookkeeping of writev().
_CONCAT_LIMIT = 4096


class BadMessageLength(OSError):
    """A frame announced a negative length or one above the caller's limit."""


def write_frame(fd: int, buf: bytes | memoryview, _write=os.write, _pack=_HEADER.pack) -> None:
    """Write *buf* as one frame to *fd*.

    *buf* must be ``bytes`` or a one-dimensional memoryview of bytes (format
    ``'B'``), so that ``len(buf)`` is its size in bytes.
    """
    n = len(buf)
    if n <= _CONCAT_LIMIT:
        # One write() also keeps Nagle's algorithm from delaying a TCP peer.
        data = _pack(n) + buf
        sent = _write(fd, data)
        if sent != n + 4:
            _write_all(fd, memoryview(data)[sent:])
        return
    header = _pack(n) if n <= MAX_SHORT_LENGTH else _EXTENDED_HEADER.pack(-1, n)
    hlen = len(header)
    sent = os.writev(fd, (header, buf))
    if sent != hlen + n:
        if sent < hlen:
            _write_all(fd, memoryview(header)[sent:])
            sent = hlen
        _write_all(fd, memoryview(buf)[sent - hlen :])


def _write_all(fd: int, view: memoryview) -> None:
    write = os.write
    while view:
        view = view[write(fd, view) :]


def read_frame(
    fd: int, maxsize: int | None = None, _read=os.read, _unpack=_HEADER.unpack
) -> bytes | bytearray | mmap.mmap:
    """Read one whole frame from *fd* and return its payload.

    Small payloads come back as ``bytes``; a payload that needed several reads
    comes back as a ``bytearray`` or, above :data:`PREALLOCATE_LIMIT`, another
    bytes-like object (see :func:`read_growing`), without an extra copy.  Raises ``EOFError`` if the
    peer closed the stream, ``OSError`` if it closed mid-frame, and
    :class:`BadMessageLength` (leaving the payload unread) if the frame is
    longer than *maxsize*.
    """
    header = _read(fd, 4)
    if len(header) != 4:
        header = _complete(fd, header, 4)
    size = _unpack(header)[0]
    if size < 0:
        size = _extended_length(fd, size)
    if maxsize is not None and size > maxsize:
        raise BadMessageLength("bad message length")
    if size <= PREALLOCATE_LIMIT:
        data = _read(fd, size)
        if len(data) == size:
            return data
        return _complete(fd, data, size)
    return read_payload(fd, size)


def read_length(fd: int) -> int:
    """Read a frame header from *fd* and return the payload length."""
    header: bytes | bytearray = os.read(fd, 4)
    if len(header) != 4:
        header = _complete(fd, header, 4)
    size = _HEADER.unpack(header)[0]
    if size < 0:
        size = _extended_length(fd, size)
    return size


def read_payload(fd: int, size: int, _read=os.read) -> bytes | bytearray | mmap.mmap:
    """Read exactly *size* payload bytes from *fd* (the header already read).

    End of stream before the first byte raises ``EOFError``, after it ``OSError``.  Memory
    is allocated as the bytes arrive (see :data:`PREALLOCATE_LIMIT`).
    """
    if size <= PREALLOCATE_LIMIT:
        data = _read(fd, size)
        if len(data) == size:
            return data
        return _complete(fd, data, size)
    first = _read(fd, PREALLOCATE_LIMIT)
    if not first:
        raise EOFError
    return read_growing(lambda view: os.readv(fd, (view,)), first, size)


def read_growing(recv_into: Callable[[memoryview], int], first: Buffer, size: int) -> Any:
    """Finish reading a payload of *size* bytes whose first bytes, *first*, are already read.

    ``recv_into(view)`` reads into the writable ``memoryview`` and returns how many bytes it
    read (0 at end of stream, which raises ``OSError``).  The buffer starts at
    ``max(PREALLOCATE_LIMIT, 2 * len(first))`` bytes and doubles when full, so it is never
    more than twice what was received (plus :data:`PREALLOCATE_LIMIT`), never more than
    *size*.  Returns a bytes-like object: on Linux a private anonymous ``mmap`` grown with
    ``mremap`` (no copy, no zero-filling: an honest sender pays no more than for a buffer
    of the whole size), elsewhere a ``bytearray``.
    """
    got = len(first)  # type: ignore[arg-type]
    cap = min(size, max(PREALLOCATE_LIMIT, 2 * got))
    if _GROW_IN_PLACE:
        import mmap

        buf: Any = mmap.mmap(-1, cap, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        buf = bytearray(cap)
    buf[:got] = first
    while True:
        cap = len(buf)
        view = memoryview(buf)
        try:
            while got < cap:
                n = recv_into(view[got:])
                if not n:
                    raise OSError("got end of file during message")
                got += n
        finally:
            view.release()  # a buffer with a live view cannot grow
        if got >= size:
            return buf
        if _GROW_IN_PLACE:
            buf.resize(min(size, 2 * cap))
        else:
            buf += bytes(min(size, 2 * cap) - cap)


def read_into(fd: int, view: memoryview, started: bool = False) -> None:
    """Fill the writable byte *view* completely with data read from *fd*.

    End of stream before the first byte raises ``EOFError`` (like the stdlib)
    unless *started* says part of the frame was already consumed; end of
    stream after that raises ``OSError``.
    """
    readv = os.readv
    total = len(view)
    pos = 0
    while pos < total:
        n = readv(fd, (view[pos:],))
        if n == 0:
            if pos == 0 and not started:
                raise EOFError
            raise OSError("got end of file during message")
        pos += n


def _complete(fd: int, first: bytes | bytearray, size: int) -> bytearray:
    """Finish reading *size* bytes of which *first* was the first read."""
    got = len(first)
    if not got:
        raise EOFError
    buf = bytearray(size)
    buf[:got] = first
    read_into(fd, memoryview(buf)[got:], started=True)
    return buf


def _extended_length(fd: int, size: int) -> int:
    if size != -1:
        raise BadMessageLength("bad message length")
    data: bytes | bytearray = os.read(fd, 8)
    if len(data) != 8:
        data = _complete(fd, data, 8)
    return _EXTENDED_LENGTH.unpack(data)[0]
