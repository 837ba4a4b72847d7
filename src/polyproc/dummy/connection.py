"""``polyproc.connection``'s API between threads of one process, over ``queue.Queue``.

The analogue of ``multiprocessing.dummy.connection``: objects are passed as they are (never
pickled), and a ``Listener``'s address is the queue that ``Client`` puts its new connection on.
"""

from __future__ import annotations

import time
from queue import Queue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any

__all__ = ["Client", "Listener", "Pipe", "Connection", "families"]

families: list[None] = [None]


class Connection:
    """One end of a thread connection: ``send`` puts on one queue, ``recv`` takes from the other.

    ``close`` does nothing, as in the stdlib: the queues live as long as either end.
    """

    def __init__(self, _in: Queue[Any], _out: Queue[Any]) -> None:
        self._in = _in
        self._out = _out

    def send(self, obj: Any) -> None:
        """Send ``obj`` (by reference) to the other end."""
        self._out.put(obj)

    def recv(self) -> Any:
        """Wait for and return the next object sent by the other end."""
        return self._in.get()

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Send a bytes copy of ``buf[offset:offset + size]``.

        Like the stdlib's thread connections (whose ``send_bytes`` is ``send``), an object
        that is not bytes-like is passed on as it is, by reference.
        """
        try:
            view = memoryview(buf)
        except TypeError:
            if offset or size is not None:
                raise TypeError(
                    f"offset and size need a bytes-like object, not {type(buf).__name__!r}"
                ) from None
            self._out.put(buf)
            return
        view = view.cast("B")
        if offset < 0 or offset > len(view):
            raise ValueError("offset out of range")
        if size is None:
            size = len(view) - offset
        elif size < 0 or offset + size > len(view):
            raise ValueError("size out of range")
        self._out.put(bytes(view[offset:offset + size]))

    def recv_bytes(self, maxlength: int | None = None) -> Any:
        """Wait for and return the next message (``OSError`` if it is bytes-like and longer
        than ``maxlength``).

        Whatever the other end sent is returned as it is (also what it sent with ``send``).
        """
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        msg = self._in.get()
        if maxlength is not None and isinstance(msg, (bytes, bytearray, memoryview)):
            if memoryview(msg).nbytes > maxlength:
                raise OSError("bad message length")
        return msg

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message is ready, waiting up to ``timeout`` seconds (None: forever)."""
        q = self._in
        deadline = None if timeout is None else time.monotonic() + timeout
        with q.not_empty:
            while not q._qsize():
                if deadline is None:
                    q.not_empty.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                q.not_empty.wait(remaining)
            return True

    def close(self) -> None:
        """Does nothing (the stdlib's thread connections need no closing)."""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Listener:
    """Accepts connections from ``Client(listener.address)`` in other threads."""

    def __init__(self, address: Any = None, family: Any = None, backlog: int = 1) -> None:
        self._backlog_queue: Queue[tuple[Queue[Any], Queue[Any]]] | None = Queue(backlog)

    def accept(self) -> Connection:
        """Wait for a client and return the connection to it."""
        if self._backlog_queue is None:
            raise OSError("listener is closed")
        return Connection(*self._backlog_queue.get())

    def close(self) -> None:
        """Stop accepting connections."""
        self._backlog_queue = None

    @property
    def address(self) -> Queue[tuple[Queue[Any], Queue[Any]]] | None:
        """What ``Client`` connects to (the listener's backlog queue)."""
        return self._backlog_queue

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def Client(address: Queue[tuple[Queue[Any], Queue[Any]]]) -> Connection:  # noqa: N802
    """Connect to the ``Listener`` whose ``address`` is given."""
    to_client: Queue[Any] = Queue()
    to_listener: Queue[Any] = Queue()
    address.put((to_listener, to_client))
    return Connection(to_client, to_listener)


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:  # noqa: N802
    """Two connected ends (always duplex, as in the stdlib)."""
    a: Queue[Any] = Queue()
    b: Queue[Any] = Queue()
    return Connection(a, b), Connection(b, a)
