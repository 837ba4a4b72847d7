"""The manager server: owns the shared objects and runs the calls proxies send.

One thread (the gate, :mod:`polyproc._managers.gate`) accepts connections and runs all their
handshakes (TLS, optional, then HMAC) without blocking, each under a deadline for the whole
handshake (``handshake_timeout``) and at most ``max_handshakes`` at once.  An authenticated
connection gets its own thread, which serves requests until the client goes away, each
request at most ``max_message_size`` bytes.  A peer that fails before authentication is
dropped with a logged reason and nothing it sent is unpickled.  A bad peer never stops the
server.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import threading
import weakref

from .. import process, util
from .._wire.security import check_bind_address, split_ssl_context
from . import codec as _codec
from . import proxy as _proxy
from .channel import BadMessageLength, Channel, family_of
from .gate import DEFAULT_MAX_HANDSHAKES, Gate, start_gate

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Server", "logger", "all_methods", "public_methods", "DEFAULT_MAX_MESSAGE_SIZE",
           "DEFAULT_MAX_HANDSHAKES", "DEFAULT_HANDSHAKE_TIMEOUT"]

#: Where the server reports dropped peers (``polyproc.log_to_stderr()`` shows them too).
logger = logging.getLogger("polyproc.managers")

#: Default ``max_message_size``: the longest request (bytes) a server accepts from an
#: authenticated client.  ``None`` lifts the limit.  (Before authentication every message
#: is at most ``polyproc._wire.auth.MAX_MESSAGE`` = 256 bytes.)
DEFAULT_MAX_MESSAGE_SIZE = 1 << 30

#: Default ``handshake_timeout``: seconds a peer has, from connecting, to finish the whole
#: handshake (TLS and HMAC).
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


_live_servers: weakref.WeakSet[Server] = weakref.WeakSet()


def _drop_sockets_in_child() -> None:
    """A process forked from a manager process (say, a Pool worker made by a managed Pool)
    must not keep the server's sockets open: its copies would keep clients of a dead
    manager waiting instead of seeing end of stream."""
    for server in list(_live_servers):
        server._drop_sockets_after_fork()


os.register_at_fork(after_in_child=_drop_sockets_in_child)


def all_methods(obj: Any) -> list[str]:
    """Names of the callable attributes of ``obj``."""
    names = []
    for name in dir(obj):
        try:
            func = getattr(obj, name)
        except AttributeError:
            continue
        if callable(func):
            names.append(name)
    return names


def public_methods(obj: Any) -> list[str]:
    """Names of the callable attributes of ``obj`` not starting with ``_``."""
    return [name for name in all_methods(obj) if name[0] != "_"]


def format_exc() -> str:
    """The current exception's traceback as text (traceback is imported on first error)."""
    import traceback

    return traceback.format_exc()


def _bind(address: Any, backlog: int) -> tuple[socket.socket, Any, str | None]:
    """A listening socket for ``address`` (None: a new Unix socket in a private directory)."""
    if address is None:
        from ..connection import arbitrary_address

        address = arbitrary_address("AF_UNIX")
    family = family_of(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Blocking whatever socket.setdefaulttimeout() says (the gate makes it non-blocking
        # itself; anything else using it must not inherit a process-wide timeout).
        sock.setblocking(True)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        bound = sock.getsockname()
    except BaseException:
        sock.close()
        raise
    if family == socket.AF_INET6:
        bound = tuple(bound[:2])
    unlink = None
    if family == socket.AF_UNIX and isinstance(address, str) and not address.startswith("\0"):
        unlink = address
    return sock, bound, unlink


class Server:
    """Serves the shared objects of a manager (see ``BaseManager.get_server``).

    ``serve_forever()`` runs until a client calls ``shutdown`` (or, for a server started by
    ``BaseManager.start``, until the parent process dies); ``address`` is the bound address.
    """

    public = ["shutdown", "create", "accept_connection", "get_methods", "debug_info",
              "number_of_objects", "dummy", "incref", "decref", "hello", "incref_many"]

    def __init__(
        self,
        registry: dict[str, tuple[Any, ...]],
        address: Any,
        authkey: bytes,
        serializer: str = "pickle",
        *,
        ssl_context: Any = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        allow_unauthenticated: bool = False,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        backlog: int = 128,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    ) -> None:
        if not isinstance(authkey, bytes):
            raise TypeError(f"Authkey {authkey!r} is type {type(authkey)!s}, not bytes")
        self.serializer = _codec.check_serializer(serializer)
        if max_message_size is not None and max_message_size < 1:
            raise ValueError("max_message_size must be a positive number of bytes or None")
        if handshake_timeout is not None and not handshake_timeout > 0:
            raise ValueError("handshake_timeout must be a positive number of seconds or None")
        if max_handshakes < 1:
            raise ValueError("max_handshakes must be at least 1")
        check_bind_address(address, authkey, allow_unauthenticated=allow_unauthenticated,
                           what=f"manager server ({type(self).__name__})")
        self._ssl = split_ssl_context(ssl_context)[0]
        if ssl_context is not None and self._ssl is None:
            raise ValueError("the ssl_context given is a client-only (PROTOCOL_TLS_CLIENT) "
                             "context; the server side needs a server context")
        self.registry = registry
        self.authkey = process.AuthenticationString(authkey)
        self.max_message_size = max_message_size
        self.handshake_timeout = handshake_timeout
        self.id = os.urandom(8).hex()
        self.max_handshakes = max_handshakes
        self._listener, self.address, self._unlink = _bind(address, backlog)
        self._gate = Gate(self._listener, self.authkey, ssl_context=self._ssl,
                          timeout=handshake_timeout, max_pending=max_handshakes,
                          on_ready=self._start_serving, logger=logger,
                          where=f"manager at {self.address!r}")
        self._gate_thread: threading.Thread | None = None
        self._accepting = True
        self.id_to_obj: dict[Any, tuple[Any, frozenset[str], Any]] = {}
        self.id_to_refcount: dict[Any, int] = {}
        self._ident_of: dict[int, Any] = {}  # id(obj) -> ident, while the entry lives
        self._idents = itertools.count(1)
        self.mutex = threading.RLock()
        self.stop_event = threading.Event()
        self._channels: set[Channel] = set()
        self._channels_lock = threading.Lock()
        self._closed = False
        _live_servers.add(self)

    # ---------------------------------------------------------------- running

    def serve_forever(self, *, watch_parent: bool = False) -> None:
        """Serve until shut down.  ``watch_parent``: also stop when the parent process dies."""
        process.current_process()._manager_server = self  # type: ignore[attr-defined]
        try:
            if not self._closed and self._accepting:
                self._gate_thread = start_gate(self._gate)
            if watch_parent:
                threading.Thread(target=self._watch_parent, name="manager-parent-watch",
                                 daemon=True).start()
            try:
                while not self.stop_event.wait(1.0):
                    pass
            except (KeyboardInterrupt, SystemExit):
                pass
        finally:
            self.close()

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (thread-safe)."""
        self.stop_event.set()

    def close(self) -> None:
        """Stop accepting, cut every connection and release the server's resources."""
        self.stop_event.set()
        if self._closed:
            return
        self._closed = True
        self._close_listener()
        with self._channels_lock:
            channels = list(self._channels)
        for chan in channels:
            chan.wake()
        try:
            self._on_stop()
        finally:
            if getattr(process.current_process(), "_manager_server", None) is self:
                del process.current_process()._manager_server  # type: ignore[attr-defined]

    def _drop_sockets_after_fork(self) -> None:
        self._closed = True
        self._unlink = None  # the parent's socket file: not ours to remove
        self.stop_event = threading.Event()
        self._channels_lock = threading.Lock()
        self._gate.discard()
        self._listener.close()
        for chan in list(self._channels):
            chan.close()
        self._channels.clear()

    def _on_stop(self) -> None:
        """Hook for subclasses: release resources when the server stops."""

    def _watch_parent(self) -> None:
        from ..connection import wait

        parent = process.parent_process()
        sentinel = getattr(parent, "_sentinel", None) if parent is not None else None
        ppid = os.getppid()
        while not self.stop_event.is_set():
            if sentinel is not None:
                try:
                    if wait([sentinel], timeout=1.0):
                        break
                except (OSError, ValueError):
                    sentinel = None
            elif self.stop_event.wait(0.5):
                return
            if os.getppid() != ppid:
                break
        else:
            return
        logger.info("manager at %r: parent process exited; shutting down", self.address)
        self.stop_event.set()

    # ---------------------------------------------------------------- connections

    def _start_serving(self, sock: socket.socket, name: str) -> None:
        """Called by the gate with an authenticated socket: serve it in a thread of its own."""
        threading.Thread(target=self._handle_connection, args=(Channel(sock), name),
                         name="manager-conn", daemon=True).start()

    def _handle_connection(self, chan: Channel, name: str) -> None:
        with self._channels_lock:
            if self._closed:
                chan.close()
                return
            self._channels.add(chan)
        _proxy.set_serving(self)
        try:
            self._serve(chan, name)
        finally:
            _proxy.set_serving(None)
            with self._channels_lock:
                self._channels.discard(chan)
            chan.close()

    def _serve(self, chan: Channel, name: str) -> None:
        """Run one authenticated client's requests until it disconnects."""
        recv = chan.recv_bytes
        send = chan.send_bytes
        codec = _codec.new_codec(self.serializer)
        encode = _pickle_replies(codec) if self.serializer == "pickle" else codec.reply
        loads = codec.load_request
        id_to_obj = self.id_to_obj
        public = self.public
        maxlen = self.max_message_size
        while True:
            try:
                data = recv(maxlen)
            except EOFError:
                return
            except BadMessageLength as e:
                logger.warning("manager at %r: dropped %s: %s (max_message_size=%s: pass a "
                               "larger max_message_size=, or None for no limit, to the "
                               "manager to allow longer requests)", self.address, name, e,
                               maxlen)
                return
            except OSError as e:
                if not self.stop_event.is_set():
                    logger.info("manager at %r: connection to %s lost: %s", self.address, name, e)
                return
            methodname = ident = None
            try:
                try:
                    request = loads(data)
                except _codec.WrongSerializer as e:
                    self._refuse_serializer(chan, name, e)
                    return
                if len(request) == 2 and request[0] == _codec.DECREF:
                    self._decref_many(request[1])
                    continue
                ident, methodname, args, kwds = request
                if ident is None:
                    if methodname not in public:
                        raise AttributeError(f"{methodname!r} unrecognized")
                    result = getattr(self, methodname)(chan, *args, **kwds)
                    kind = _codec.RETURN
                else:
                    try:
                        obj, exposed, gettypeid = id_to_obj[ident]
                    except KeyError:
                        raise KeyError(
                            f"no shared object with id {ident!r} in this manager (it was "
                            "released: no proxy held a reference to it)") from None
                    if methodname not in exposed:
                        fallback = self.fallback_mapping.get(methodname)
                        if fallback is None:
                            raise AttributeError(
                                f"method {methodname!r} of {type(obj)!r} object is not in "
                                f"exposed={tuple(sorted(exposed))!r}")
                        result = fallback(self, chan, ident, obj, *args, **kwds)
                        kind = _codec.RETURN
                    else:
                        try:
                            result = getattr(obj, methodname)(*args, **kwds)
                        except Exception as e:
                            result, kind = e, _codec.ERROR
                        else:
                            kind = _codec.RETURN
                            typeid = gettypeid.get(methodname) if gettypeid else None
                            if typeid:
                                rident, rexposed = self.create(chan, typeid, result)
                                result = (rexposed, _proxy.Token(typeid, self.address, rident,
                                                                 self.id))
                                kind = _codec.PROXY
            except Exception:
                result, kind = format_exc(), _codec.TRACEBACK
            try:
                out = encode(kind, result)
            except Exception:
                out = encode(_codec.UNSERIALIZABLE, format_exc())
            # Drop this request's objects before waiting for the next one: a referent
            # must not be kept alive by this thread after its last proxy is released.
            request = args = kwds = obj = result = None
            try:
                send(out)
            except OSError as e:
                logger.info("manager at %r: could not reply to %s: %s", self.address, name, e)
                return
            if methodname == "shutdown" and ident is None and kind == _codec.RETURN:
                self.stop_event.set()
                return

    def _refuse_serializer(self, chan: Channel, name: str, exc: _codec.WrongSerializer) -> None:
        """Answer a message of the other serializer (in that serializer, so the client can
        read why) and drop the connection."""
        logger.warning("manager at %r: dropped %s: %s", self.address, name, exc)
        text = (f"the manager at {self.address!r} uses serializer={self.serializer!r} but "
                f"was sent a {exc.peer!r} message ({exc})\n")
        try:
            chan.send_bytes(_codec.new_codec(exc.peer).reply(_codec.TRACEBACK, text))
        except OSError:
            pass

    @property
    def listener(self) -> _ListenerView:
        """The listening socket, seen as the stdlib's ``Listener``: its ``close()`` stops
        accepting connections (those already made keep being served)."""
        return _ListenerView(self)

    def _close_listener(self) -> None:
        self._accepting = False
        self._gate.stop()
        thread = self._gate_thread
        if thread is None:
            self._gate.discard()
        elif thread is not threading.current_thread():
            thread.join(5.0)
        self._listener.close()
        if self._unlink:
            try:
                os.unlink(self._unlink)
            except OSError:
                pass
            self._unlink = None

    # ---------------------------------------------------------------- fallbacks

    def fallback_getvalue(self, conn: Any, ident: Any, obj: Any) -> Any:
        return obj

    def fallback_str(self, conn: Any, ident: Any, obj: Any) -> str:
        return str(obj)

    def fallback_repr(self, conn: Any, ident: Any, obj: Any) -> str:
        return repr(obj)

    fallback_mapping = {
        "__str__": fallback_str,
        "__repr__": fallback_repr,
        "#GETVALUE": fallback_getvalue,
    }

    # ---------------------------------------------------------------- public functions

    def dummy(self, c: Any) -> None:
        """Does nothing (used to check a connection)."""

    def hello(self, c: Any, name: str | None = None) -> dict[str, Any]:
        """Introduce the server to a new polyproc client (and name the serving thread)."""
        if name:
            threading.current_thread().name = str(name)[:100]
        return {"server": self.id, "max_message_size": self.max_message_size, "version": 1}

    def accept_connection(self, c: Any, name: str) -> None:
        """The stdlib client's way to start serving a connection (every polyproc connection
        already serves)."""
        threading.current_thread().name = str(name)[:100]

    def shutdown(self, c: Any) -> None:
        """Stop the server (after replying)."""
        util.debug("manager received shutdown message")

    def debug_info(self, c: Any) -> str:
        """A description of each shared object and its reference count."""
        with self.mutex:
            lines = []
            for ident in sorted(self.id_to_refcount, key=str):
                obj = self.id_to_obj.get(ident, (None,))[0]
                lines.append(f"  {ident}:       refcount={self.id_to_refcount[ident]}\n"
                             f"    {str(obj)[:75]}")
            return "\n".join(lines)

    def number_of_objects(self, c: Any) -> int:
        """How many shared objects the server holds."""
        return len(self.id_to_refcount)

    def get_methods(self, c: Any, token: Any) -> tuple[str, ...]:
        """The exposed method names of the object ``token`` refers to."""
        ident = token.get("id") if isinstance(token, dict) else token.id  # XML-RPC: a struct
        return tuple(self.id_to_obj[ident][1])

    def create(self, c: Any, typeid: str, /, *args: Any, **kwds: Any) -> tuple[Any, tuple[str, ...]]:
        """Create a shared object of ``typeid``; return ``(ident, exposed)``.

        The new object starts with one reference, which the caller's proxy adopts.
        """
        callable_, exposed, method_to_typeid, _proxytype = self.registry[typeid]
        if callable_ is None:
            if kwds or len(args) != 1:
                raise ValueError("Without callable, must have one non-keyword argument")
            obj = args[0]
        else:
            obj = callable_(*args, **kwds)
        if exposed is None:
            exposed = public_methods(obj)
        if method_to_typeid is not None:
            if not isinstance(method_to_typeid, dict):
                raise TypeError(f"Method_to_typeid {method_to_typeid!r}: type "
                                f"{type(method_to_typeid)!s}, not dict")
            exposed = list(exposed) + list(method_to_typeid)
        exposed = tuple(exposed)
        with self.mutex:
            ident = self._ident_of.get(id(obj))
            if ident is not None and self.id_to_obj[ident][0] is obj:
                self.id_to_refcount[ident] += 1
            else:
                ident = next(self._idents)
                self._ident_of[id(obj)] = ident
                self.id_to_refcount[ident] = 1
            self.id_to_obj[ident] = (obj, frozenset(exposed), method_to_typeid)
        return ident, exposed

    def incref(self, c: Any, ident: Any) -> None:
        """Add a reference to the object ``ident``."""
        with self.mutex:
            try:
                self.id_to_refcount[ident] += 1
            except KeyError:
                raise KeyError(f"no shared object with id {ident!r} (already released)") from None

    def incref_many(self, c: Any, idents: list[Any]) -> None:
        """Add one reference per entry of ``idents`` (all or none)."""
        with self.mutex:
            missing = [i for i in idents if i not in self.id_to_refcount]
            if missing:
                raise KeyError(f"no shared objects with ids {missing!r}")
            for ident in idents:
                self.id_to_refcount[ident] += 1

    def decref(self, c: Any, ident: Any) -> None:
        """Drop a reference to ``ident``; the object is released with its last one."""
        entry = None
        with self.mutex:
            count = self.id_to_refcount.get(ident)
            if count is None:
                raise KeyError(f"no shared object with id {ident!r} (already released)")
            if count > 1:
                self.id_to_refcount[ident] = count - 1
                return
            del self.id_to_refcount[ident]
            entry = self.id_to_obj.pop(ident, None)
            if entry is not None and self._ident_of.get(id(entry[0])) == ident:
                del self._ident_of[id(entry[0])]
        # The object (which may hold proxies of other shared objects, whose finalizers
        # call decref again) is destroyed here, outside the lock.
        del entry

    def _decref_many(self, idents: Any) -> None:
        for ident in idents:
            try:
                self.decref(None, ident)
            except KeyError:
                util.debug("decref of unknown id %r ignored", ident)


def _pickle_replies(dumper: _codec.Dumper) -> Any:
    """The pickle codec's reply encoder for a server connection: plain results skip the
    pickler; a proxy pickled into a reply hands the receiver a reference (see
    ``BaseProxy.__reduce__``)."""
    plain_dumps = _codec._plain_dumps
    protocol = _codec._PROTOCOL
    is_plain = _codec.is_plain
    dumps = dumper.dumps
    set_responding = _proxy.set_responding

    def encode(kind: str, result: Any) -> bytes:
        if is_plain(result):
            return plain_dumps((kind, result), protocol)
        set_responding(True)
        try:
            return dumps((kind, result))
        finally:
            set_responding(False)

    return encode


class _ListenerView:
    """``Server.listener``: what the stdlib's ``Listener`` offers that makes sense here."""

    __slots__ = ("_server",)

    def __init__(self, server: Server) -> None:
        self._server = server

    @property
    def address(self) -> Any:
        return self._server.address

    def fileno(self) -> int:
        return self._server._listener.fileno()

    def close(self) -> None:
        """Stop accepting connections (and remove a Unix socket's file)."""
        self._server._close_listener()


def run_server_process(server: Server, watch_parent: bool = True) -> None:
    """Serve, then end this (manager) process without waiting on stray non-daemon threads."""
    try:
        server.serve_forever(watch_parent=watch_parent)
    finally:
        try:
            util._run_finalizers(0)
            for p in process.active_children():
                p.terminate()
            for p in process.active_children():
                p.join(1.0)
                if p.is_alive():
                    p.kill()
                    p.join(1.0)
            util._run_finalizers()
        finally:
            util._flush_std_streams()
            sys.stdout.flush()
            os._exit(0)
