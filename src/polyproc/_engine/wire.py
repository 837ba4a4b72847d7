"""Messages between the engine and its workers: frames on a Unix socket.

A frame is a 12-byte header (payload length, number of fds) and a pickled payload. Pickle
protocol 5 lets large buffers (numpy arrays, bytes, memoryviews of at least ``OOB_THRESHOLD``
bytes) leave the pickle stream: they are copied once into an anonymous shared-memory file
(``memfd``) whose fd travels with the frame (SCM_RIGHTS); the receiver maps it and unpickles
the objects *on top of* the mapping, without copying them again. Nothing gets a name in
/dev/shm, so nothing can leak when a process dies.
"""

from __future__ import annotations

import mmap
import os
import pickle
import socket
import struct

from .. import reduction

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

HEADER = struct.Struct("!QI")
OOB_THRESHOLD = 1 << 18  # 256 KiB: below this, copying through the socket is cheaper
_MAX_FDS = 64
_ANC_SPACE = socket.CMSG_SPACE(_MAX_FDS * 4)
#: The function id of a batch whose tasks come from several jobs (a pack of single calls):
#: each of its items is then ``(fid, args, kwargs)`` (see ``worker.run_batch``).
MIXED = -1


def dumps(obj: object) -> tuple[bytes, list[int]]:
    """Pickle ``obj``; large buffers go to a memfd. Returns (payload, fds to send)."""
    buffers: list[pickle.PickleBuffer] = []

    def keep_in_band(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OOB_THRESHOLD:
            return True
        buffers.append(buf)
        return False

    try:
        data = pickle.dumps(obj, 5, buffer_callback=keep_in_band)
    except (pickle.PicklingError, AttributeError, TypeError):
        buffers.clear()
        data = bytes(reduction.dumps(obj))
    if not buffers:
        return data, []
    return data, [_to_memfd(buffers)]


def pickling_error(obj: object) -> BaseException | None:
    """None if ``dumps(obj)`` works, else the error it raises (nothing is kept or sent)."""
    try:
        _data, fds = dumps(obj)
    except Exception as e:
        return e
    for fd in fds:
        os.close(fd)
    return None


def _to_memfd(buffers: list[pickle.PickleBuffer]) -> int:
    sizes = [b.raw().nbytes for b in buffers]
    fd = os.memfd_create("polyproc-oob", os.MFD_CLOEXEC)
    try:
        header = struct.pack(f"!I{len(sizes)}Q", len(sizes), *sizes)
        os.ftruncate(fd, len(header) + sum(sizes))
        offset = 0
        chunks: tuple[bytes | memoryview, ...] = (header, *(b.raw() for b in buffers))
        for chunk in chunks:
            view = memoryview(chunk)
            while view.nbytes:
                n = os.pwrite(fd, view, offset)
                offset += n
                view = view[n:]
    except BaseException:
        os.close(fd)
        raise
    return fd


def loads(data: bytes | bytearray | memoryview, fds: list[int]) -> Any:
    """Unpickle a payload made by ``dumps`` (takes ownership of ``fds``)."""
    if not fds:
        return pickle.loads(data)
    fd = fds[0]
    try:
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size)
    finally:
        for f in fds:
            os.close(f)
    view = memoryview(mapping)
    (count,) = struct.unpack_from("!I", view, 0)
    sizes = struct.unpack_from(f"!{count}Q", view, 4)
    offset = 4 + 8 * count
    buffers = []
    for n in sizes:
        buffers.append(view[offset:offset + n])
        offset += n
    return pickle.loads(data, buffers=buffers)


def send(sock: socket.socket, payload: bytes, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    """Send one frame on a blocking socket (closing ``fds`` once sent)."""
    header = HEADER.pack(len(payload), len(fds))
    if fds:
        try:
            n = sock.sendmsg([header, payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                   struct.pack(f"{len(fds)}i", *fds))])
        finally:
            for fd in fds:
                os.close(fd)
        rest = memoryview(header + payload)[n:]
        if rest.nbytes:
            sock.sendall(rest)
    elif len(payload) < 65536:
        sock.sendall(header + payload)
    else:
        sock.sendall(header)
        sock.sendall(payload)


def recv(sock: socket.socket) -> tuple[bytearray, list[int]]:
    """Receive one frame on a blocking socket. Raises EOFError when the peer is gone."""
    fds: list[int] = []
    header = bytearray()
    while len(header) < HEADER.size:
        chunk, anc, _flags, _addr = sock.recvmsg(HEADER.size - len(header), _ANC_SPACE)
        _collect_fds(anc, fds)
        if not chunk:
            raise EOFError("the other side closed the connection")
        header += chunk
    size, nfds = HEADER.unpack(header)
    buf = bytearray(size)
    view = memoryview(buf)
    pos = 0
    while pos < size:
        if len(fds) < nfds:
            n, anc, _flags, _addr = sock.recvmsg_into([view[pos:]], _ANC_SPACE)
            _collect_fds(anc, fds)
        else:
            n = sock.recv_into(view[pos:])
        if not n:
            raise EOFError("the other side closed the connection mid-frame")
        pos += n
    return buf, fds


def _collect_fds(anc: list[tuple[int, int, bytes]], fds: list[int]) -> None:
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))


#: What one ``FrameReader.read`` takes from the socket at most. The receive buffer is
#: allocated once per reader: ``recvmsg(n)`` would allocate (and for large ``n`` map and unmap)
#: ``n`` bytes on every call, which costs more than the read itself.
READ_SIZE = 256 * 1024


class FrameReader:
    """Incremental, non-blocking frame parser for the engine's side of a worker socket."""

    __slots__ = ("sock", "buf", "fds", "_into")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: list[int] = []
        self._into = memoryview(bytearray(READ_SIZE))

    def read(self) -> list[tuple[bytearray, list[int]]]:
        """Read what is available; return the complete frames. EOFError at end of stream."""
        into = self._into
        try:
            n, anc, _flags, _addr = self.sock.recvmsg_into([into], _ANC_SPACE)
        except (BlockingIOError, InterruptedError):
            return []
        if anc:
            _collect_fds(anc, self.fds)
        if not n:
            raise EOFError("worker closed its connection")
        buf = self.buf
        buf += into[:n]
        frames: list[tuple[bytearray, list[int]]] = []
        pos = 0
        hsize = HEADER.size
        while len(buf) - pos >= hsize:
            size, nfds = HEADER.unpack_from(buf, pos)
            end = pos + hsize + size
            if len(buf) < end or len(self.fds) < nfds:
                break
            frame_fds = self.fds[:nfds]
            del self.fds[:nfds]
            frames.append((buf[pos + hsize:end], frame_fds))  # one copy, a bytearray
            pos = end
        if pos:
            del buf[:pos]
        return frames

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


class FrameWriter:
    """Non-blocking frame output queue for the engine's side of a worker socket."""

    __slots__ = ("sock", "pending")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: list[tuple[memoryview, list[int]]] = []

    def push(self, payload: bytes, fds: list[int]) -> None:
        data = memoryview(HEADER.pack(len(payload), len(fds)) + payload)
        self.pending.append((data, fds))

    def flush(self) -> bool:
        """Write as much as the socket takes; True when everything was sent."""
        pending = self.pending
        sock = self.sock
        while pending:
            data, fds = pending[0]
            try:
                if fds:
                    n = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               struct.pack(f"{len(fds)}i", *fds))])
                    for fd in fds:
                        os.close(fd)
                    fds.clear()
                else:
                    n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                return False
            if n < data.nbytes:
                pending[0] = (data[n:], fds)
                return False
            pending.pop(0)
        return True

    def close(self) -> None:
        for _data, fds in self.pending:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pending.clear()
