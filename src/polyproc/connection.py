"""Message-oriented connections between processes: the ``multiprocessing.connection`` API.

``Pipe()`` returns a pair of :class:`Connection` objects; ``Listener``/``Client`` connect
processes through Unix or TCP sockets, optionally authenticated with an HMAC handshake;
``wait()`` blocks until any of several connections is readable.  The wire format (framing
and handshake) is the stdlib's, so a polyproc end can talk to a stdlib end of the same
Python version.  POSIX only.
"""

from __future__ import annotations

import operator
import os
import select
import socket
import sys
import time

from . import reduction, util
from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import BufferTooShort as BufferTooShort
from ._wire import framing
from ._wire.auth import HandshakeTimeout as HandshakeTimeout
from ._wire.auth import answer_challenge as answer_challenge
from ._wire.auth import deliver_challenge as deliver_challenge
from ._wire.deadline import describe_peer, handshake
from ._wire.security import check_bind_address

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from typing_extensions import Buffer

__all__ = ["Client", "Listener", "Pipe", "wait"]

#: Address families usable on this platform, and the one used when none is given.
families = ["AF_INET", "AF_UNIX"]
default_family = "AF_UNIX"

_ForkingPickler = reduction.ForkingPickler
_write_frame = framing.write_frame
_read_frame = framing.read_frame
_BadMessageLength = framing.BadMessageLength
_POLLIN = select.POLLIN
_MAX_POLL_MS = 2**31 - 1

#: Default ``handshake_timeout`` of a :class:`Listener` (seconds for a client's whole
#: authentication handshake, counted from ``accept``).
HANDSHAKE_TIMEOUT = 10.0

# Socket buffer size requested for Unix-domain connections (the kernel doubles it and caps it
# at net.core.wmem_max).  When a whole message fits, the writer finishes in one system call
# and the reader wakes up once, which makes 100 KiB - 1 MiB messages several times faster
# than with the default (about 200 KiB); nothing is allocated until data is queued.
_UNIX_SOCKET_BUFFER = 512 * 1024


class Connection:
    """One end of a message stream over a file descriptor (pipe or socket).

    Messages are whole objects (``send``/``recv``, pickled) or whole byte strings
    (``send_bytes``/``recv_bytes``).  A connection is not safe for concurrent use by
    several threads in the same direction.
    """

    # Class defaults keep __del__ safe when __init__ failed half-way.
    _handle: int | None = None
    _rfd: int | None = None  # the fd while open and readable, else None
    _wfd: int | None = None  # the fd while open and writable, else None

    def __init__(self, handle: int, readable: bool = True, writable: bool = True) -> None:
        handle = operator.index(handle)
        if handle < 0:
            raise ValueError("invalid handle")
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        self._handle = handle
        self._readable = bool(readable)
        self._writable = bool(writable)
        self._rfd = handle if readable else None
        self._wfd = handle if writable else None

    def __del__(self, _close=os.close) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _close(handle)

    # ---------------------------------------------------------------- state

    @property
    def closed(self) -> bool:
        """True if the connection is closed."""
        return self._handle is None

    @property
    def readable(self) -> bool:
        """True if the connection is readable."""
        return self._readable

    @property
    def writable(self) -> bool:
        """True if the connection is writable."""
        return self._writable

    def fileno(self) -> int:
        """The file descriptor of the connection."""
        if self._handle is None:
            raise OSError("handle is closed")
        return self._handle

    def close(self) -> None:
        """Close the connection (idempotent)."""
        handle = self._handle
        if handle is not None:
            self._handle = self._rfd = self._wfd = None
            os.close(handle)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        self.close()

    def _not_writable(self) -> OSError:
        if self._handle is None:
            return OSError("handle is closed")
        return OSError("connection is read-only")

    def _not_readable(self) -> OSError:
        if self._handle is None:
            return OSError("handle is closed")
        return OSError("connection is write-only")

    def _bad_message_length(self) -> None:
        # The unread payload leaves the stream out of sync, so no further reads.
        if self._writable:
            self._readable = False
            self._rfd = None
        else:
            self.close()

    # ---------------------------------------------------------------- sending

    def send(self, obj: Any) -> None:
        """Send a picklable object."""
        fd = self._wfd
        if fd is None:
            raise self._not_writable()
        _write_frame(fd, _ForkingPickler.dumps(obj))

    def send_bytes(self, buf: Buffer, offset: int = 0, size: int | None = None) -> None:
        """Send ``size`` bytes of the bytes-like ``buf`` starting at byte ``offset``."""
        fd = self._wfd
        if fd is None:
            raise self._not_writable()
        if type(buf) is bytes and not offset and size is None:
            _write_frame(fd, buf)
            return
        m = memoryview(buf)
        if m.ndim != 1 or m.itemsize != 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        _write_frame(fd, m[offset : offset + size])

    # ---------------------------------------------------------------- receiving

    def recv(self) -> Any:
        """Receive an object sent with ``send``; ``EOFError`` if the peer has closed."""
        fd = self._rfd
        if fd is None:
            raise self._not_readable()
        try:
            data = _read_frame(fd)
        except _BadMessageLength:
            self._bad_message_length()
            raise
        return _ForkingPickler.loads(data)

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receive one message as bytes; ``EOFError`` if the peer has closed.

        A message longer than ``maxlength`` raises ``OSError`` and, as in the stdlib,
        leaves the connection unreadable.
        """
        fd = self._rfd
        if fd is None:
            raise self._not_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        try:
            data = _read_frame(fd, maxlength)
        except _BadMessageLength:
            self._bad_message_length()
            raise
        return data if type(data) is bytes else bytes(data)

    def recv_bytes_into(self, buf: Buffer, offset: int = 0) -> int:
        """Receive one message into the writable buffer ``buf`` at byte ``offset``.

        Returns the message size.  If it does not fit, raises ``BufferTooShort`` whose
        ``args[0]`` is the whole message.
        """
        fd = self._rfd
        if fd is None:
            raise self._not_readable()
        m = memoryview(buf)
        if m.readonly:
            raise TypeError("recv_bytes_into() requires a writable buffer")
        if m.ndim != 1 or m.itemsize != 1:
            m = m.cast("B")
        nbytes = m.nbytes
        if offset < 0:
            raise ValueError("negative offset")
        if offset > nbytes:
            raise ValueError("offset too large")
        try:
            size = framing.read_length(fd)
        except _BadMessageLength:
            self._bad_message_length()
            raise
        if offset + size > nbytes:
            raise BufferTooShort(bytes(framing.read_payload(fd, size)))
        framing.read_into(fd, m[offset : offset + size])
        return size

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or end of stream) can be read, waiting up to ``timeout``
        seconds (``None``: forever)."""
        fd = self._rfd
        if fd is None:
            raise self._not_readable()
        poller = select.poll()
        poller.register(fd, _POLLIN)
        return bool(_poll(poller, timeout))


def _poll(poller: select.poll, timeout: float | None) -> list[tuple[int, int]]:
    """``poller.poll`` with a timeout in seconds; negative means 0, ``None`` forever."""
    if timeout is None:
        return poller.poll()
    if timeout <= 0:
        return poller.poll(0)
    ms = timeout * 1000
    if ms <= _MAX_POLL_MS:
        return poller.poll(ms)  # poll() rounds fractional milliseconds up
    deadline = time.monotonic() + timeout
    while True:
        ready = poller.poll(min(ms, _MAX_POLL_MS))
        remaining = deadline - time.monotonic()
        if ready or remaining <= 0:
            return ready
        ms = remaining * 1000


def wait(object_list: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """Wait until some of ``object_list`` are ready to read; return those.

    Objects are connections, sockets or anything with ``fileno()``, or plain fds.  An
    object whose peer hung up counts as ready (reading it gives end of stream).  Returns
    an empty list if ``timeout`` seconds pass first (``None``: wait forever).
    """
    poller = select.poll()
    entries = []
    for obj in object_list:
        fileno = getattr(obj, "fileno", None)
        fd = operator.index(obj) if fileno is None else fileno()
        poller.register(fd, _POLLIN)
        entries.append((obj, fd))
    ready = {fd for fd, _events in _poll(poller, timeout)}
    return [obj for obj, fd in entries if fd in ready]


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802 - stdlib name
    """Return the two ends of a new pipe.

    Duplex pipes are socket pairs; with ``duplex=False`` the first end can only receive
    and the second can only send.
    """
    if duplex:
        s1, s2 = socket.socketpair()
        return _socket_connection(s1), _socket_connection(s2)
    rfd, wfd = os.pipe()
    return Connection(rfd, writable=False), Connection(wfd, readable=False)


# -------------------------------------------------------------------- addresses


def _is_abstract_unix_address(address: object) -> bool:
    if not sys.platform.startswith("linux") or not address:
        return False
    if isinstance(address, bytes):
        return address[0] == 0
    return isinstance(address, str) and address[0] == "\0"


def address_type(address: object) -> str:
    """Return the family of ``address``: ``'AF_INET'``, ``'AF_UNIX'`` or ``'AF_PIPE'``."""
    if type(address) is tuple:
        return "AF_INET"
    if type(address) is str and address.startswith("\\\\"):
        return "AF_PIPE"
    if type(address) is str or _is_abstract_unix_address(address):
        return "AF_UNIX"
    raise ValueError(f"address type of {address!r} unrecognized")


def arbitrary_address(family: str) -> Any:
    """Return a fresh address of ``family`` to listen on.

    ``AF_INET`` gives ``('localhost', 0)`` (the OS picks the port); ``AF_UNIX`` a new path
    in this process's private temporary directory, which is removed at exit.
    """
    if family == "AF_INET":
        return ("localhost", 0)
    if family == "AF_UNIX":
        return os.path.join(util.get_temp_dir(), f"listener-{os.urandom(8).hex()}")
    if family == "AF_PIPE":
        return rf"\\.\pipe\pyc-{os.getpid()}-{os.urandom(8).hex()}"
    raise ValueError("unrecognized family")


def _validate_family(family: str) -> None:
    if family not in families and not (
        family.startswith("AF_") and family != "AF_PIPE" and hasattr(socket, family)
    ):
        raise ValueError(f"Family {family} is not recognized.")


def _check_authkey(authkey: object) -> None:
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")


def _socket_connection(sock: socket.socket) -> Connection:
    """Turn a connected socket into a blocking Connection that owns its fd."""
    sock.setblocking(True)
    family = sock.family
    if family == socket.AF_UNIX:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _UNIX_SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UNIX_SOCKET_BUFFER)
        except OSError:
            pass  # only an optimisation
    elif family in (socket.AF_INET, socket.AF_INET6):
        # Frames are written whole, so Nagle's algorithm would only add latency.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Connection(sock.detach())


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# -------------------------------------------------------------------- listener / client


class Listener:
    """A bound, listening socket that accepts connections from :func:`Client`.

    ``address`` defaults to a fresh address of ``family`` (itself derived from
    ``address``, defaulting to ``'AF_UNIX'``).  With a non-empty ``authkey``, every
    accepted connection must pass the mutual HMAC handshake before it is returned, all of
    it within ``handshake_timeout`` seconds (polyproc addition; None: no deadline).
    A Unix socket's file is removed when the listener is closed.
    """

    def __init__(
        self,
        address: Any = None,
        family: str | None = None,
        backlog: int = 1,
        authkey: bytes | None = None,
        *,
        allow_unauthenticated: bool = False,
        handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
    ) -> None:
        if handshake_timeout is not None and not handshake_timeout > 0:
            raise ValueError("handshake_timeout must be a positive number of seconds or None")
        family = family or (address and address_type(address)) or default_family
        _validate_family(family)
        _check_authkey(authkey)
        address = address or arbitrary_address(family)
        # Safe by default: no unauthenticated pickle on a non-loopback address.
        check_bind_address(address, authkey, allow_unauthenticated=allow_unauthenticated)
        sock = socket.socket(getattr(socket, family))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(True)
            sock.bind(address)
            sock.listen(backlog)
            self._address = sock.getsockname()
        except BaseException:
            sock.close()
            raise
        self._socket: socket.socket | None = sock
        self._family = family
        self._authkey = authkey
        self._handshake_timeout = handshake_timeout
        self._last_accepted: Any = None
        self._unlink: util.Finalize | None = None
        if family == "AF_UNIX" and not _is_abstract_unix_address(address):
            self._unlink = util.Finalize(self, _unlink_quietly, args=(address,), exitpriority=0)

    def accept(self) -> Connection:
        """Wait for a client, authenticate it if an authkey was given, and return the
        connection.

        A client that fails the handshake raises ``AuthenticationError`` (and is
        disconnected); one that has not finished it ``handshake_timeout`` seconds after
        being accepted raises :class:`HandshakeTimeout`, an ``AuthenticationError`` that is
        also a ``TimeoutError``.  The listener stays usable either way.
        """
        sock = self._socket
        if sock is None:
            raise OSError("listener is closed")
        client, self._last_accepted = sock.accept()
        with client:
            if self._authkey:
                peer = describe_peer(client, self._last_accepted)
                handshake(client, self._authkey, server=True,
                          timeout=self._handshake_timeout, peer=peer)
            return _socket_connection(client)

    def close(self) -> None:
        """Close the listening socket (and remove its Unix socket file)."""
        sock = self._socket
        if sock is not None:
            self._socket = None
            try:
                sock.close()
            finally:
                unlink, self._unlink = self._unlink, None
                if unlink is not None:
                    unlink()

    @property
    def address(self) -> Any:
        """The address the listener is bound to."""
        return self._address

    @property
    def last_accepted(self) -> Any:
        """The address of the most recently accepted client, or ``None``."""
        return self._last_accepted

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, exc_type: object, exc_value: object, exc_tb: object) -> None:
        self.close()


def Client(  # noqa: N802 - stdlib name
    address: Any, family: str | None = None, authkey: bytes | None = None
) -> Connection:
    """Connect to the :class:`Listener` at ``address`` and return the connection.

    With a non-empty ``authkey`` the mutual HMAC handshake runs before returning.
    """
    family = family or address_type(address)
    _validate_family(family)
    _check_authkey(authkey)
    sock = socket.socket(getattr(socket, family))
    try:
        sock.setblocking(True)
        sock.connect(address)
        conn = _socket_connection(sock)
    except BaseException:
        sock.close()
        raise
    if authkey:
        try:
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
        except BaseException:
            conn.close()
            raise
    return conn


# -------------------------------------------------------------------- pickling


def _reduce_connection(conn: Connection) -> tuple[Any, tuple[Any, bool, bool]]:
    return _rebuild_connection, (reduction.DupFd(conn.fileno()), conn.readable, conn.writable)


def _rebuild_connection(dupfd: Any, readable: bool, writable: bool) -> Connection:
    return Connection(dupfd.detach(), readable, writable)


reduction.register(Connection, _reduce_connection)
