"""Accepting and authenticating a manager server's connections, all in one thread.

The :class:`Gate` thread accepts connections and runs every unfinished handshake (TLS if
configured, then the HMAC challenge in both directions, see :mod:`polyproc._wire.auth`) on
non-blocking sockets with a selector.  A connection gets a thread of its own only once it has
authenticated, so peers that never finish cost one file descriptor each, never a thread.

Limits on peers that have not authenticated:

* ``timeout`` (the server's ``handshake_timeout``): the whole handshake must be done this
  many seconds after the connection was accepted, however the peer spreads its bytes; a late
  peer is dropped at the deadline.
* ``max_pending`` (the server's ``max_handshakes``): unfinished handshakes at once.  At the
  limit, new connections wait in the listening socket's backlog until a handshake finishes,
  or until the *oldest* unfinished one has had :data:`DROP_AFTER` seconds (at most half of
  ``timeout``), when it is dropped to make room: the oldest is the likeliest to be stalled,
  and a flood of stalled peers cannot lock honest clients out for a whole ``timeout``; a
  burst of honest clients (hundreds connecting at once) is served, not dropped.
* every handshake message is at most :data:`polyproc._wire.auth.MAX_MESSAGE` bytes; a longer
  (or negative) length header drops the peer before its payload is read.

Every dropped peer is logged, naming it.  Nothing a peer sends is unpickled here.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import threading
import time

from .._wire import auth
from .._wire.deadline import describe_peer
from .channel import tune_socket

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable
    from typing import Any

__all__ = ["Gate", "DEFAULT_MAX_HANDSHAKES"]

#: Default cap on a server's connections that have not finished their handshake.
DEFAULT_MAX_HANDSHAKES = 256

_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_HEADER = struct.Struct("!i")
_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_ACCEPTS_PER_WAKEUP = 64
_ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of file descriptors
#: Seconds an unfinished handshake may take before a new connection, arriving with
#: ``max_handshakes`` pending, may push it out (at most half the handshake timeout). Honest
#: ones finish in milliseconds, but in seconds on a small machine swamped by a burst of
#: hundreds of clients, whose threads answer slowly.
DROP_AFTER = 5.0
_monotonic = time.monotonic


class _NeverRaised(Exception):
    """Stands for the ssl want-read/want-write errors when TLS is off."""


class _Pending:
    """One connection in its handshake."""

    __slots__ = ("sock", "name", "started", "deadline", "steps", "out", "failing", "receiving",
                 "inbuf", "events", "tls")

    def __init__(self, sock: Any, name: str, started: float, deadline: float | None,
                 steps: Any, tls: bool) -> None:
        self.sock = sock
        self.name = name
        self.started = started
        self.deadline = deadline
        self.steps = steps
        self.out = b""  # framed bytes still to send
        self.failing = False  # ``out`` is the FAILURE message
        self.receiving = False  # the steps wait for a message
        self.inbuf = b""
        self.events = 0  # what the selector watches for (0: not registered)
        self.tls = tls  # the TLS handshake is still to do


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "closed the connection during the handshake"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class Gate:
    """Accepts on ``listener`` and authenticates peers; calls ``on_ready(sock, name)`` (in the
    gate thread) with each authenticated, blocking socket.  ``where`` names the server in
    logs.  :meth:`run` is the thread's body; :meth:`stop` (any thread) ends it."""

    def __init__(self, listener: socket.socket, authkey: bytes, *,
                 ssl_context: ssl.SSLContext | None, timeout: float | None, max_pending: int,
                 on_ready: Callable[[Any, str], None], logger: logging.Logger,
                 where: str) -> None:
        if max_pending < 1:
            raise ValueError("max_handshakes must be at least 1")
        self.listener = listener
        self.authkey = bytes(authkey)
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_pending = max_pending
        self.on_ready = on_ready
        self.logger = logger
        self.where = where
        self.pending: dict[int, _Pending] = {}  # by fd, oldest first
        self.stopping = False
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._resume_accepting: float | None = None
        self._full = False  # not accepting until a handshake slot is free (see _room)
        if ssl_context is not None:
            import ssl

            self._want_read: type[Exception] = ssl.SSLWantReadError
            self._want_write: type[Exception] = ssl.SSLWantWriteError
        else:
            self._want_read = self._want_write = _NeverRaised

    # ---------------------------------------------------------------- control

    def stop(self) -> None:
        """Make :meth:`run` return soon (it closes the unfinished connections)."""
        self.stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # already awake, or already finished

    def discard(self) -> None:
        """Close this gate's descriptors when its thread is not running: it never ran, or
        this is a forked child (where the thread does not exist; the parent's copies of
        the descriptors stay open)."""
        self.stopping = True
        for p in list(self.pending.values()):
            p.sock.close()
        self.pending.clear()
        sel, self._selector = self._selector, None
        if sel is not None:
            sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # ---------------------------------------------------------------- the loop

    def run(self) -> None:
        """Accept and authenticate until :meth:`stop`."""
        sel = self._selector = selectors.DefaultSelector()
        try:
            self.listener.setblocking(False)
            sel.register(self.listener, _READ, None)
            sel.register(self._wake_r, _READ, self)
            while not self.stopping:
                for key, _events in sel.select(self._wait_time()):
                    if self.stopping:
                        break
                    data = key.data
                    if data is None:
                        self._accept_some()
                    elif data is self:
                        self._drain_wakeups()
                    elif self.pending.get(data.sock.fileno()) is data:
                        assert data is not None  # (``is`` narrows it to the get's Optional)
                        self._advance(data)
                self._expire()
                if self._resume_accepting is not None and _monotonic() >= self._resume_accepting:
                    self._resume_accepting = None
                    self._full = False
                    sel.register(self.listener, _READ, None)
        except Exception:
            if not self.stopping:
                self.logger.exception("%s: the accepting thread failed", self.where)
            raise
        finally:
            for p in list(self.pending.values()):
                p.sock.close()
            self.pending.clear()
            self._selector = None
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _wait_time(self) -> float | None:
        wake = self._resume_accepting
        if self.pending:  # oldest first: its deadline is the earliest
            deadline = next(iter(self.pending.values())).deadline
            if deadline is not None:
                wake = deadline if wake is None else min(wake, deadline)
        if wake is None:
            return None
        return max(0.0, wake - _monotonic())

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(256):
                pass
        except OSError:
            pass

    def _expire(self) -> None:
        if self.timeout is None:
            return
        now = _monotonic()
        while self.pending:
            p = next(iter(self.pending.values()))
            if p.deadline is None or p.deadline > now:
                return
            self._drop(p, f"handshake timed out: not finished within {self.timeout:g} s of "
                          "connecting (a silent or too slow peer, or one that does not speak "
                          "this protocol)")

    def _room(self) -> bool:
        """Whether a new connection may be accepted now: below ``max_pending``, or the oldest
        pending handshake is old enough to be dropped for it. If not, stop watching the
        listener (connections wait in its backlog) until a slot frees or the oldest is."""
        if len(self.pending) < self.max_pending:
            return True
        oldest = next(iter(self.pending.values()))
        after = DROP_AFTER if self.timeout is None else min(DROP_AFTER, self.timeout / 2)
        if _monotonic() - oldest.started >= after:
            return True  # _admit drops it
        assert self._selector is not None
        self._selector.unregister(self.listener)
        self._full = True
        self._resume_accepting = oldest.started + after
        return False

    def _accept_some(self) -> None:
        listener = self.listener
        for _ in range(_ACCEPTS_PER_WAKEUP):
            if not self._room():
                return
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if self.stopping:
                    return
                if e.errno in _RESOURCE_ERRNOS:
                    self.logger.warning("%s: accept failed (%s); pausing %.1f s", self.where,
                                        e, _ACCEPT_PAUSE)
                    assert self._selector is not None
                    self._selector.unregister(listener)
                    self._resume_accepting = _monotonic() + _ACCEPT_PAUSE
                else:
                    self.logger.info("%s: accept failed: %s", self.where, e)
                return
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        name = describe_peer(sock, peer)
        if len(self.pending) >= self.max_pending:
            oldest = next(iter(self.pending.values()))
            self._drop(oldest, f"too many unfinished handshakes (max_handshakes="
                               f"{self.max_pending}): the oldest is dropped to make room")
        try:
            sock.setblocking(False)
            tune_socket(sock)
            tls = self.ssl_context is not None
            if tls:
                sock = self.ssl_context.wrap_socket(  # type: ignore[union-attr]
                    sock, server_side=True, do_handshake_on_connect=False)
        except Exception as e:
            sock.close()
            self.logger.warning("%s: dropped %s before authentication: %s", self.where, name,
                                _reason(e))
            return
        now = _monotonic()
        deadline = None if self.timeout is None else now + self.timeout
        p = _Pending(sock, name, now, deadline, auth.server_steps(self.authkey), tls)
        self.pending[sock.fileno()] = p
        self._advance(p)

    # ---------------------------------------------------------------- one connection

    def _drop(self, p: _Pending, reason: str, level: int = logging.WARNING) -> None:
        self._forget(p)
        p.sock.close()
        self.logger.log(level, "%s: dropped %s before authentication: %s", self.where,
                        p.name, reason)

    def _forget(self, p: _Pending) -> None:
        self.pending.pop(p.sock.fileno(), None)
        if self._full:  # a slot is free: accept again at once
            self._resume_accepting = _monotonic()
        if p.events and self._selector is not None:
            try:
                self._selector.unregister(p.sock)
            except (KeyError, ValueError, OSError):
                pass  # not watched after all
            p.events = 0

    def _advance(self, p: _Pending) -> None:
        """Run ``p``'s handshake as far as it goes without blocking."""
        try:
            events = self._step(p)
        except Exception as e:
            level = logging.INFO if isinstance(e, EOFError) else logging.WARNING
            self._drop(p, _reason(e), level)
            return
        if events:
            if events != p.events:
                assert self._selector is not None
                try:
                    if p.events:
                        self._selector.modify(p.sock, events, p)
                    else:
                        self._selector.register(p.sock, events, p)
                except (OSError, ValueError) as e:
                    self._drop(p, f"cannot watch the connection: {_reason(e)}")
                    return
                p.events = events
            return
        self._forget(p)  # authenticated
        sock = p.sock
        try:
            sock.setblocking(True)
            self.on_ready(sock, p.name)
        except Exception as e:
            sock.close()
            self.logger.warning("%s: dropped %s after authentication: %s", self.where, p.name,
                                _reason(e))

    def _step(self, p: _Pending) -> int:
        """Advance the handshake; return the event to wait for, or 0 once authenticated."""
        want_read, want_write = self._want_read, self._want_write
        sock = p.sock
        if p.tls:
            try:
                sock.do_handshake()
            except want_read:
                return _READ
            except want_write:
                return _WRITE
            p.tls = False
        while True:
            if p.out:
                try:
                    n = sock.send(p.out)
                except (BlockingIOError, want_write):
                    return _WRITE
                except want_read:
                    return _READ
                except OSError:
                    if not p.failing:
                        raise
                    n = len(p.out)  # the peer is gone: the refusal is what we report
                p.out = p.out[n:]
                if p.out:
                    return _WRITE
                received = None
            elif p.receiving:
                received = self._read_message(p)
                if type(received) is int:
                    return received
                p.receiving = False
            else:
                received = None
            try:
                message = p.steps.send(received)
            except StopIteration:
                return 0
            if message is None:
                p.receiving = True
            else:
                p.out = _HEADER.pack(len(message)) + message
                p.failing = message is auth.FAILURE

    def _read_message(self, p: _Pending) -> Any:
        """The next handshake message (bytes), or the event to wait for (int) while it has
        not fully arrived.  Reads exactly
        its bytes: what the peer sends after its last handshake message is the serving
        thread's."""
        sock = p.sock
        buf = p.inbuf
        while True:
            if len(buf) >= 4:
                size = _HEADER.unpack_from(buf)[0]
                if size < 0 or size > auth.MAX_MESSAGE:
                    raise auth.AuthenticationError(
                        f"handshake message too long (length header {size}; at most "
                        f"{auth.MAX_MESSAGE} bytes)")
                need = 4 + size - len(buf)
                if not need:
                    p.inbuf = b""
                    return buf[4:]
            else:
                need = 4 - len(buf)
            try:
                chunk = sock.recv(need)
            except (BlockingIOError, self._want_read):
                p.inbuf = buf
                return _READ
            except self._want_write:
                p.inbuf = buf
                return _WRITE
            if not chunk:
                if buf:
                    raise OSError("got end of file during a handshake message")
                raise EOFError
            buf += chunk


def start_gate(gate: Gate) -> threading.Thread:
    """Run ``gate`` in a new daemon thread."""
    thread = threading.Thread(target=gate.run, name="manager-gate", daemon=True)
    thread.start()
    return thread
