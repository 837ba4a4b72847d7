"""Pickling for objects sent between processes: a reducer registry and fd passing.

``ForkingPickler`` is a ``pickle.Pickler`` with polyproc's reducers (connections, sockets,
fds, ...) added to its dispatch table. ``dumps`` tries the fast C pickler first and falls back
to cloudpickle for what cannot travel by reference (lambdas, closures, functions of an
interactive ``__main__``), so ``Process(target=lambda: ...)`` works under spawn and forkserver.
"""

from __future__ import annotations

import array
import copyreg
import functools
import io
import os
import pickle
import socket
import sys

from . import _spawning, _stdlib_compat

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "ForkingPickler", "register", "dump", "dumps", "loads", "DupFd", "sendfds", "recvfds",
    "send_handle", "recv_handle", "HAVE_SEND_HANDLE", "ACKNOWLEDGE",
]

HAVE_SEND_HANDLE = hasattr(socket, "CMSG_LEN") and hasattr(socket, "SCM_RIGHTS") and hasattr(
    socket.socket, "sendmsg"
)
ACKNOWLEDGE = False  # POSIX needs no acknowledgement after sending a handle

PROTOCOL = pickle.HIGHEST_PROTOCOL

_extra_reducers: dict[type, Any] = {}
_merged_table: dict[type, Any] = {}
_merged_from: tuple[int, ...] = (-1, -1)


def _dispatch_table() -> dict[type, Any]:
    """copyreg's table plus polyproc's reducers (and the stdlib's, when the program loaded
    the stdlib's multiprocessing: its connections then travel as it would send them),
    rebuilt only when one of them changed."""
    global _merged_table, _merged_from
    stdlib = _stdlib_compat.extra_reducers()
    key = (len(copyreg.dispatch_table), len(_extra_reducers), id(stdlib), len(stdlib))
    if key != _merged_from:
        table = dict(copyreg.dispatch_table)
        table.update(stdlib)
        table.update(_extra_reducers)
        _merged_table, _merged_from = table, key
    return _merged_table


class ForkingPickler(pickle.Pickler):
    """Pickler with polyproc's reducers for connections, sockets and other OS handles."""

    _extra_reducers = _extra_reducers

    def __init__(self, file: Any, protocol: int | None = None, **kwargs: Any) -> None:
        super().__init__(file, PROTOCOL if protocol is None else protocol, **kwargs)
        self.dispatch_table = _dispatch_table()

    @classmethod
    def register(cls, type_: type, reduce: Any) -> None:
        """Register ``reduce(obj)`` as the reducer of ``type_``."""
        _extra_reducers[type_] = reduce

    @classmethod
    def dumps(cls, obj: Any, protocol: int | None = None) -> memoryview:
        """Pickle ``obj`` (falling back to cloudpickle for lambdas and closures)."""
        return dumps(obj, protocol)

    loads = staticmethod(pickle.loads)


def register(type_: type, reduce: Any) -> None:
    """Register ``reduce(obj)`` as the reducer used for instances of ``type_``."""
    _extra_reducers[type_] = reduce


_by_value_cache: tuple[object, bool] = (None, False)


def _by_value_needed() -> bool:
    """True when ``__main__`` cannot be re-imported in a child (interactive, -c, stdin)."""
    global _by_value_cache
    main = sys.modules.get("__main__")
    if _by_value_cache[0] is main:
        return _by_value_cache[1]
    if main is None or getattr(main, "__spec__", None) is not None:
        needed = False
    else:
        path = getattr(main, "__file__", None)
        needed = not path or not os.path.isfile(path)
    _by_value_cache = (main, needed)
    return needed


def _cloud_pickler_class() -> type:
    import cloudpickle

    base = cloudpickle.Pickler

    class _CloudForkingPickler(base):  # type: ignore[misc, valid-type]
        """cloudpickle's pickler, which also knows polyproc's reducers."""

        def reducer_override(self, obj: Any) -> Any:
            reduce = _extra_reducers.get(type(obj))
            if reduce is not None:
                return reduce(obj)
            if isinstance(obj, io.IOBase):
                # cloudpickle would send a copy of an open file's contents; the stdlib
                # refuses the file, and so do we (only code travels by value).
                kind = type(obj)
                name = kind.__qualname__ if kind.__module__ == "builtins" else \
                    f"{kind.__module__}.{kind.__qualname__}"
                raise TypeError(f"cannot pickle {name!r} object")
            return super().reducer_override(obj)

    return _CloudForkingPickler


@functools.lru_cache(maxsize=1)
def _cloud_pickler() -> type:
    return _cloud_pickler_class()


def _cloud_dumps(obj: Any, protocol: int | None) -> bytes:
    buf = io.BytesIO()
    _cloud_pickler()(buf, protocol=PROTOCOL if protocol is None else protocol).dump(obj)
    return buf.getvalue()


def dumps(obj: Any, protocol: int | None = None) -> memoryview:
    """Pickle ``obj`` for another process; cloudpickle handles what plain pickle can't."""
    buf = io.BytesIO()
    try:
        ForkingPickler(buf, protocol).dump(obj)
        if _by_value_needed() and b"__main__" in buf.getvalue():
            # It refers to the main module, which a child can't re-import (interactive,
            # -c, stdin): send those functions and classes by value instead.
            return memoryview(_cloud_dumps(obj, protocol))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        try:
            return memoryview(_cloud_dumps(obj, protocol))
        except Exception as cloud_exc:
            # cloudpickle went further (it pickles lambdas and closures by value), so its
            # error names the real culprit, e.g. the lock a lambda captured.
            raise cloud_exc from exc
    return buf.getbuffer()


def dump(obj: Any, file: Any, protocol: int | None = None) -> None:
    """Pickle ``obj`` to the binary ``file`` (see ``dumps``)."""
    file.write(dumps(obj, protocol))


loads = pickle.loads


# ---------------------------------------------------------------- fd passing


def sendfds(sock: socket.socket, fds: list[int] | tuple[int, ...]) -> None:
    """Send the file descriptors ``fds`` over a Unix socket with SCM_RIGHTS."""
    fd_array = array.array("i", fds)
    msg = bytes([len(fd_array) % 256])
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd_array)])


def recvfds(sock: socket.socket, size: int) -> list[int]:
    """Receive exactly ``size`` file descriptors sent with ``sendfds``."""
    fd_array = array.array("i")
    bytes_size = fd_array.itemsize * size
    msg, ancdata, flags, addr = sock.recvmsg(1, socket.CMSG_SPACE(bytes_size))
    if not msg and not ancdata:
        raise EOFError("connection closed while receiving file descriptors")
    for level, type_, data in ancdata:
        if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
            fd_array.frombytes(data[: len(data) - (len(data) % fd_array.itemsize)])
    if len(fd_array) != size or msg[0] != size % 256:
        for fd in fd_array:
            os.close(fd)
        raise RuntimeError(
            f"expected {size} file descriptors, received {len(fd_array)} "
            f"(message {msg!r}, flags {flags})"
        )
    return list(fd_array)


def send_handle(conn: Any, handle: int, destination_pid: int | None = None) -> None:
    """Send the fd ``handle`` over the Unix-socket connection ``conn``."""
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
        sendfds(s, [handle])


def recv_handle(conn: Any) -> int:
    """Receive an fd sent with ``send_handle`` over the connection ``conn``."""
    with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as s:
        return recvfds(s, 1)[0]


class _InheritedFd:
    """An fd that the child of a spawn start inherits under the same number."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def detach(self) -> int:
        return self.fd


def DupFd(fd: int) -> Any:  # noqa: N802 - the stdlib's name
    """Return a picklable wrapper whose ``detach()`` gives a duplicate of ``fd`` after
    unpickling in another process.

    While a process is being started the fd travels with it (inherited under spawn, passed
    with SCM_RIGHTS under forkserver); otherwise a per-process fd sharer hands it over.
    """
    popen = _spawning.get_spawning_popen()
    if popen is not None:
        return popen.DupFd(popen.duplicate_for_child(fd))
    from ._resources import fd_sharer

    return fd_sharer.DupFd(fd)


# ---------------------------------------------------------------- standard reducers


def _reduce_socket(s: socket.socket) -> Any:
    df = DupFd(s.fileno())
    return _rebuild_socket, (df, s.family, s.type, s.proto)


def _rebuild_socket(df: Any, family: int, type_: int, proto: int) -> socket.socket:
    fd = df.detach()
    return socket.socket(family, type_, proto, fileno=fd)


register(socket.socket, _reduce_socket)


class _C:
    def f(self) -> None:
        pass


def _reduce_method(m: Any) -> Any:
    if m.__self__ is None:
        return getattr, (m.__class__, m.__func__.__name__)
    return getattr, (m.__self__, m.__func__.__name__)


register(type(_C().f), _reduce_method)


def _reduce_method_descriptor(m: Any) -> Any:
    return getattr, (m.__objclass__, m.__name__)


register(type(list.append), _reduce_method_descriptor)
register(type(int.__add__), _reduce_method_descriptor)


def _reduce_partial(p: functools.partial[Any]) -> Any:
    return _rebuild_partial, (p.func, p.args, p.keywords or {})


def _rebuild_partial(func: Any, args: tuple[Any, ...], keywords: dict[str, Any]) -> Any:
    return functools.partial(func, *args, **keywords)


register(functools.partial, _reduce_partial)
