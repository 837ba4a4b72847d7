"""The authentication handshake over a blocking socket, under one deadline for all of it.

A socket timeout bounds each read, not the handshake: a peer that sends one byte just before
every timeout would keep the other side waiting forever.  :class:`DeadlineSocket` sets the
socket's timeout to *what is left until the deadline* before every system call, so the whole
handshake (every message, every partial read) ends by the deadline, and then raises
:class:`~polyproc._wire.auth.HandshakeTimeout`.

Reads take exactly the bytes of each handshake message, never more, so once the handshake is
done the socket can be handed to a ``Connection`` or a channel with nothing lost.
"""

from __future__ import annotations

import socket
import struct
import time

from . import auth
from .framing import BadMessageLength

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DeadlineSocket", "handshake", "describe_peer"]

_HEADER = struct.Struct("!i")
_monotonic = time.monotonic


def describe_peer(sock: socket.socket, peer: Any = None) -> str:
    """A short name for the peer of a connected socket, for logs and errors
    (``host:port``, or ``local peer pid P uid U`` for a Unix socket)."""
    if sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            return f"local peer pid {pid} uid {uid}"
        except (OSError, AttributeError):
            return "local peer"
    if peer is None:
        try:
            peer = sock.getpeername()
        except OSError:
            return "peer"
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return repr(peer)


class DeadlineSocket:
    """``send_bytes``/``recv_bytes`` of whole frames over a socket, every call bounded by
    ``deadline`` (a ``time.monotonic()`` value; None: no deadline)."""

    __slots__ = ("sock", "deadline", "timeout", "peer")

    def __init__(self, sock: socket.socket, timeout: float | None, peer: str = "peer") -> None:
        self.sock = sock
        self.timeout = timeout
        self.deadline = None if timeout is None else _monotonic() + timeout
        self.peer = peer

    def _expired(self) -> auth.HandshakeTimeout:
        return auth.HandshakeTimeout(
            f"handshake with {self.peer} timed out: not finished within {self.timeout:g} s "
            "(a silent or too slow peer, or one that does not speak this protocol); "
            "connection dropped")

    def _arm(self) -> None:
        deadline = self.deadline
        if deadline is None:
            self.sock.settimeout(None)
            return
        left = deadline - _monotonic()
        if left <= 0:
            raise self._expired()
        self.sock.settimeout(left)

    def send_bytes(self, data: bytes) -> None:
        """Send one frame (handshake messages are small: one header, no extended form)."""
        self._arm()
        try:
            self.sock.sendall(_HEADER.pack(len(data)) + data)
        except TimeoutError:
            raise self._expired() from None

    def _exact(self, n: int, started: bool) -> bytes:
        chunks: list[bytes] = []
        while n:
            self._arm()
            try:
                chunk = self.sock.recv(n)
            except TimeoutError:
                raise self._expired() from None
            if not chunk:
                if started or chunks:
                    raise OSError("got end of file during message")
                raise EOFError("connection closed by the peer")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one frame; :class:`BadMessageLength` (payload unread) if it is longer than
        ``maxlength`` or announces a negative or extended length."""
        size = _HEADER.unpack(self._exact(4, False))[0]
        if size < 0 or (maxlength is not None and size > maxlength):
            raise BadMessageLength(f"bad message length {size}")
        return self._exact(size, True)


def handshake(sock: socket.socket, authkey: bytes, *, server: bool, timeout: float | None,
              peer: str = "peer") -> None:
    """Run the mutual HMAC handshake on ``sock`` as the listening side (``server``) or the
    connecting side, all of it within ``timeout`` seconds (None: no deadline).

    Leaves the socket blocking (no timeout).  Raises
    :class:`~polyproc._wire.auth.HandshakeTimeout` at the deadline,
    :class:`~polyproc.AuthenticationError`, ``EOFError`` or ``OSError``.
    """
    stream = DeadlineSocket(sock, timeout, peer)
    steps = auth.server_steps(authkey) if server else auth.client_steps(authkey)
    auth.run_steps(steps, stream)
    sock.settimeout(None)
