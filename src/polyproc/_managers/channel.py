"""Framed message channels over sockets, for manager servers and their clients.

The frames are the stdlib ``multiprocessing.connection`` ones (4-byte big-endian length, or
``-1`` and an 8-byte length for huge payloads), so the HMAC handshake of
:mod:`polyproc._wire.auth` runs unchanged over a :class:`Channel`, and a stdlib
``Client``/``Listener`` can authenticate against it.  Unlike ``Connection``, a channel owns
its socket and reads ahead (up to 64 KiB per system call): a small reply costs one
``recv``, not two.  It works over plain and TLS sockets alike and honours socket timeouts.
A long payload's buffer grows as its bytes arrive (never the announced length up front).

:func:`open_channel` connects, optionally wraps TLS, and authenticates.
"""

from __future__ import annotations

import socket
import struct

from .._wire.deadline import handshake
from .._wire.framing import BadMessageLength, read_growing

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    import ssl
    from typing import Any

__all__ = ["Channel", "open_channel", "family_of", "tune_socket", "BadMessageLength"]

_HEADER = struct.Struct("!i")
_EXTENDED = struct.Struct("!Q")
_MAX_SHORT = 0x7FFFFFFF
_CHUNK = 65536
# Up to this size the header is glued to the payload so one send() suffices.
_CONCAT_LIMIT = 65536


def family_of(address: Any) -> socket.AddressFamily:
    """The socket family for a manager address (tuple: TCP; str or bytes: Unix)."""
    if isinstance(address, tuple):
        host = address[0] if address else ""
        return socket.AF_INET6 if isinstance(host, str) and ":" in host else socket.AF_INET
    if isinstance(address, (str, bytes)):
        return socket.AF_UNIX
    raise ValueError(f"address type of {address!r} unrecognized")


def tune_socket(sock: socket.socket) -> None:
    """TCP: no Nagle delay (frames are written whole) and keepalive probes, so a vanished
    peer host is eventually noticed instead of waited for forever."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
        except OSError:
            pass  # only an optimisation


class Channel:
    """A message stream over a connected socket that the channel owns.

    ``send_bytes``/``recv_bytes`` move whole messages.  ``recv_bytes(maxlength)`` raises
    :class:`BadMessageLength` for a longer message *before* reading or allocating its
    payload (the stream is then out of step: close the channel).  A long payload is read
    into a buffer that grows as its bytes arrive.  Not safe for concurrent
    use by several threads in the same direction.
    """

    __slots__ = ("sock", "_recv", "_recv_into", "_sendall", "_buf", "_pos", "__weakref__")

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self._recv = sock.recv
        self._recv_into = sock.recv_into
        self._sendall = sock.sendall
        self._buf = b""
        self._pos = 0

    def __del__(self) -> None:
        sock = self.sock
        if sock is not None:
            self.sock = None
            sock.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self.sock is None

    def fileno(self) -> int:
        """The socket's file descriptor."""
        if self.sock is None:
            raise OSError("channel is closed")
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        """Set the socket timeout for both directions (None: block)."""
        if self.sock is not None:
            self.sock.settimeout(timeout)

    def close(self) -> None:
        """Close the socket (idempotent).  Never ``shutdown()``: a forked copy must not cut
        its parent's stream."""
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def wake(self) -> None:
        """Make a thread blocked reading this channel return (end of stream)."""
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ---------------------------------------------------------------- sending

    def send_bytes(self, data: Any) -> None:
        """Send one message (``bytes``, ``bytearray`` or a byte ``memoryview``)."""
        n = len(data)
        if n <= _MAX_SHORT:
            header = _HEADER.pack(n)
        else:
            header = struct.pack("!iQ", -1, n)
        if n <= _CONCAT_LIMIT:
            self._sendall(header + data)
        else:
            self._sendall(header)
            self._sendall(data)

    # ---------------------------------------------------------------- receiving

    def recv_bytes(self, maxlength: int | None = None) -> Any:
        """Receive one message (``bytes``; another bytes-like object for large ones).

        ``EOFError`` if the peer closed the stream between messages, ``OSError`` if it
        closed mid-message, :class:`BadMessageLength` if the message is longer than
        ``maxlength``.
        """
        buf = self._buf
        pos = self._pos
        if not buf:
            # The common case of a request/reply protocol: nothing read ahead, and the
            # whole message arrives in one recv().
            buf = self._recv(_CHUNK)
            if len(buf) >= 4:
                size = _HEADER.unpack_from(buf, 0)[0]
                if size == len(buf) - 4 and (maxlength is None or size <= maxlength):
                    return buf[4:]
            elif not buf:
                raise EOFError("connection closed by the peer")
            self._buf = buf
        if len(buf) - pos >= 4:
            size = _HEADER.unpack_from(buf, pos)[0]
            end = pos + 4 + size
            if 0 <= size and end <= len(buf) and (maxlength is None or size <= maxlength):
                if end == len(buf):
                    self._buf = b""
                    self._pos = 0
                else:
                    self._pos = end
                return buf[pos + 4 : end]
        return self._recv_slow(maxlength)

    def _fill(self, need: int) -> bytes:
        """Make at least ``need`` bytes available at the start of the buffer."""
        buf = self._buf[self._pos :]
        while len(buf) < need:
            chunk = self._recv(_CHUNK)
            if not chunk:
                self._buf, self._pos = buf, 0
                if buf:
                    raise OSError("got end of file during message")
                raise EOFError("connection closed by the peer")
            buf += chunk
        self._buf, self._pos = buf, 0
        return buf

    def _recv_slow(self, maxlength: int | None) -> Any:
        buf = self._fill(4)
        size = _HEADER.unpack_from(buf, 0)[0]
        hlen = 4
        if size < 0:
            if size != -1:
                raise BadMessageLength(f"bad message length {size}")
            buf = self._fill(12)
            size = _EXTENDED.unpack_from(buf, 4)[0]
            hlen = 12
        if maxlength is not None and size > maxlength:
            raise BadMessageLength(
                f"message of {size} bytes is longer than the limit of {maxlength} bytes"
            )
        have = len(buf) - hlen
        if have >= size:
            end = hlen + size
            if end == len(buf):
                self._buf, self._pos = b"", 0
            else:
                self._pos = end
            return buf[hlen:end]
        if size - have <= _CHUNK:
            buf = self._fill(hlen + size)
            self._pos = hlen + size
            return buf[hlen : hlen + size]
        self._buf, self._pos = b"", 0
        # The buffer grows as the payload arrives: a header announcing gigabytes that are
        # never sent costs what was sent, not the announced length.
        return read_growing(self._recv_into, buf[hlen:], size)


def open_channel(
    address: Any,
    authkey: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float | None = 20.0,
) -> Channel:
    """Connect to a manager server at ``address``, run TLS (if ``ssl_context``) and the HMAC
    handshake, and return the channel (blocking, no timeout).

    ``timeout`` bounds connecting, then the TLS handshake, then the HMAC handshake: each
    one as a whole (a server trickling bytes cannot stretch it).  Failures raise ``OSError``
    (refused, unreachable, timed out), ``ssl.SSLError`` or
    :class:`~polyproc.AuthenticationError` (:class:`~polyproc._wire.auth.HandshakeTimeout`
    at the deadline).
    """
    sock = socket.socket(family_of(address), socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        tune_socket(sock)
        if ssl_context is not None:
            from .._wire.security import client_ssl_wrap

            sock = client_ssl_wrap(ssl_context, sock, address)  # one deadline (CPython's)
        handshake(sock, authkey, server=False, timeout=timeout,
                  peer=f"the manager at {address!r}")
    except BaseException:
        sock.close()
        raise
    return Channel(sock)
