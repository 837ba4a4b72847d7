"""Hand an fd to another, already running, process: the receiver asks this process for it.

Used when a connection or socket is pickled outside process start (e.g. put on a Queue).
Each process runs at most one sharer: a daemon thread serving a Unix socket in the process's
private (0700) temp directory. A pickled ``DupFd`` carries the socket path and a random
128-bit key; the first process that presents the key receives the fd with SCM_RIGHTS.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from typing import Any

from .. import util

_KEY_BYTES = 16
_lock = threading.Lock()
_sharer: _Sharer | None = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it when we were forked


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Sharer:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.fds: dict[bytes, int] = {}
        self.address = os.path.join(util.get_temp_dir(), "fds-" + secrets.token_hex(4))
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking whatever socket.setdefaulttimeout() says: an accept() timing out would
        # end the serving thread, and every later DupFd would find nobody to answer.
        self.listener.setblocking(True)
        self.listener.bind(self.address)
        self.listener.listen(16)
        self.thread = threading.Thread(target=self._serve, name="polyproc-fd-sharer", daemon=True)
        self.thread.start()
        util.Finalize(self, self._stop, exitpriority=0)

    def register(self, fd: int) -> bytes:
        key = secrets.token_bytes(_KEY_BYTES)
        self.fds[key] = os.dup(fd)
        return key

    def _serve(self) -> None:
        from ..reduction import sendfds

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5.0)
                    key = _recv_exact(conn, _KEY_BYTES)
                    if key == b"\0" * _KEY_BYTES:
                        return  # stop request from _stop()
                    fd = self.fds.pop(key, None)
                    if fd is None:
                        continue
                    try:
                        sendfds(conn, [fd])
                    finally:
                        os.close(fd)
                except (OSError, EOFError):
                    continue

    def _stop(self) -> None:
        if self.pid != os.getpid():
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5.0)
                s.connect(self.address)
                s.sendall(b"\0" * _KEY_BYTES)
        except OSError:
            pass
        self.thread.join(2.0)
        self.listener.close()
        for fd in self.fds.values():
            util.close_fds(fd)
        self.fds.clear()
        try:
            os.unlink(self.address)
        except OSError:
            pass


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _get_sharer() -> _Sharer:
    global _sharer
    with _lock:
        if _sharer is None or _sharer.pid != os.getpid():
            _sharer = _Sharer()
        return _sharer


class DupFd:
    """Picklable claim on a duplicate of an fd held by this process's sharer."""

    def __init__(self, fd: int) -> None:
        sharer = _get_sharer()
        self.address = sharer.address
        self.key = sharer.register(fd)
        self.pid = sharer.pid

    def detach(self) -> int:
        """Fetch the fd from the process that pickled this object (once)."""
        if self.pid == os.getpid():
            # Unpickled in the same process: take our own duplicate.
            sharer = _get_sharer()
            fd = sharer.fds.pop(self.key, None)
            if fd is not None:
                return fd
        from ..reduction import recvfds

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10.0)
            s.connect(self.address)
            s.sendall(self.key)
            return recvfds(s, 1)[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address, "key": self.key, "pid": self.pid}
