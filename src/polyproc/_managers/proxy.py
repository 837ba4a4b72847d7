"""The client side of managers: tokens, endpoints (per-thread connections) and proxies.

How a proxy talks to its manager
--------------------------------
Every process keeps one :class:`Endpoint` per manager it talks to, and each thread one
persistent, authenticated connection per endpoint.  A method call is one request and one
reply on that connection; so are creating an object, ``incref`` and the manager's own
functions (the stdlib opens a new connection, with its handshake, for each of those).

Reference counting
------------------
The server keeps a reference count per shared object; every proxy owns one reference and
gives it back when it is garbage collected.  Where a reference is created and handed over
in one go, the receiver *adopts* it instead of asking for another (one round trip instead
of three): a new object from ``create``, a proxy returned by the server (the server takes
the reference while pickling its reply), a proxy pickled for a child being spawned (the
parent takes it), and every proxy alive at ``os.fork`` (the parent takes one reference per
proxy for the child just before forking; the child adopts them).  Giving a reference back
is a one-way message: sent at once when the thread's connection is idle, otherwise queued
and sent ahead of the next request (or at exit).
"""

from __future__ import annotations

import os
import threading
import weakref

from .. import process, util
from .._exceptions import AuthenticationError
from .._spawning import get_spawning_popen
from . import codec as _codec
from .channel import open_channel

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "Token", "RemoteError", "ManagerConnectionError", "BaseProxy", "RebuildProxy",
    "MakeProxyType", "AutoProxy", "convert_to_error", "dispatch",
]


class Token:
    """Identifies a shared object: its ``typeid``, the manager ``address`` and its ``id``.

    ``server`` (polyproc addition) is the unique id of the manager server process, which
    lets a proxy that travelled through the manager find the address this process uses.
    """

    __slots__ = ("typeid", "address", "id", "server")

    def __init__(self, typeid: str, address: Any, id: Any, server: str | None = None) -> None:  # noqa: A002
        self.typeid = typeid
        self.address = address
        self.id = id
        self.server = server

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.typeid, self.address, self.id, self.server)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.typeid, self.address, self.id = state[:3]
        self.server = state[3] if len(state) > 3 else None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(typeid={self.typeid!r}, address={self.address!r}, "
                f"id={self.id!r})")


class RemoteError(Exception):
    """An error raised in the manager process, carrying its formatted traceback."""

    def __str__(self) -> str:
        return "\n" + "-" * 75 + "\n" + str(self.args[0]) + "-" * 75


class ManagerConnectionError(ConnectionError, EOFError):
    """The connection to a manager failed or was lost (the manager process died, was shut
    down, or cannot be reached).  Both a ``ConnectionError`` and an ``EOFError``."""


def convert_to_error(kind: str, result: Any) -> BaseException:
    """The exception a reply of kind ``kind`` stands for."""
    if kind == _codec.ERROR:
        return result
    if kind in (_codec.TRACEBACK, _codec.UNSERIALIZABLE):
        if not isinstance(result, str):
            raise TypeError(
                f"Result {result!r} (kind '{kind}') type is {type(result)}, not str")
        if kind == _codec.UNSERIALIZABLE:
            return RemoteError(f"Unserializable message: {result}\n")
        return RemoteError(result)
    return ValueError(f"Unrecognized message type {kind!r}")


def dispatch(c: Any, id: Any, methodname: str, args: tuple[Any, ...] = (),  # noqa: A002
             kwds: dict[str, Any] | None = None) -> Any:
    """Send a request over the connection ``c`` (``send``/``recv`` of objects) and return
    the result (the stdlib's helper; polyproc's proxies use their own connections)."""
    c.send((id, methodname, args, kwds or {}))
    kind, result = c.recv()
    if kind == _codec.RETURN:
        return result
    try:
        raise convert_to_error(kind, result)
    finally:
        # The traceback holds this frame: a local naming the exception would keep it alive
        # in a reference cycle (gh-106558).
        del result


# ==================================================================== server-side state

# A server thread marks itself while it serves a client (``.server``) and while it pickles
# a reply (``.responding``): a proxy of that server unpickled there is the server's own
# reference (counted locally), and a proxy pickled into a reply hands the receiver a
# reference taken on its behalf.
_server_tls = threading.local()


def set_serving(server: Any) -> None:
    """Mark the current thread as serving clients of ``server`` (None: not serving)."""
    _server_tls.server = server


def serving_server() -> Any:
    """The server the current thread serves, if any."""
    return getattr(_server_tls, "server", None)


def _responding() -> bool:
    return getattr(_server_tls, "responding", False)


def set_responding(flag: bool) -> None:
    """Mark the current thread as pickling a reply of the server (see ``__reduce__``)."""
    _server_tls.responding = flag


# ==================================================================== endpoints

_registry_lock = threading.RLock()
_by_address: dict[Any, Endpoint] = {}
_by_server: dict[str, Endpoint] = {}
_all_endpoints: weakref.WeakSet[Endpoint] = weakref.WeakSet()
#: Proxy types by typeid, from every manager class's ``register`` (for processes that
#: receive a proxy of a new object without having the manager object).
_proxytypes: dict[str, Any] = {}
_exit_flush_registered: int | None = None  # pid that registered the exit flush


def _addr_key(address: Any) -> Any:
    return tuple(address) if isinstance(address, list) else address


class Endpoint:
    """What one process knows about one manager: address, key, TLS, its connections."""

    def __init__(self, address: Any, authkey: bytes, ssl_context: Any = None,
                 serializer: str = "pickle") -> None:
        self.address = address
        self.serializer = serializer  # 'pickle' or 'xmlrpclib': the server's
        self.authkey = process.AuthenticationString(authkey)
        self.ssl_context = ssl_context  # client context, factory, or None
        self._resolved_ssl: Any = None
        self.tls = threading.local()  # .conn: this thread's connection
        # Reentrant: a proxy's finalizer (run by the garbage collector at any allocation)
        # may queue a reference while this thread holds the lock.
        self.lock = threading.RLock()
        self.pending: list[Any] = []  # idents whose references are not given back yet
        self.server_id: str | None = None
        self.max_message_size: int | None = None
        self.closed = False  # the manager was shut down: drop reference bookkeeping
        # A server that is not polyproc's (the stdlib's): it serves objects on a connection
        # only after ``accept_connection`` and its own functions on one-shot connections,
        # and has no one-way messages.
        self.legacy = False
        self.owner_pid: int | None = None  # set in the process that started the manager
        self.connect_timeout: float | None = 20.0
        _all_endpoints.add(self)

    def __repr__(self) -> str:
        return f"<manager endpoint {self.address!r}{' closed' if self.closed else ''}>"

    def client_ssl(self) -> Any:
        """The client-side ``ssl.SSLContext`` (resolving a factory once), or None."""
        spec = self.ssl_context
        if spec is None:
            return None
        if self._resolved_ssl is None:
            from .._wire.security import split_ssl_context

            client = split_ssl_context(spec)[1]
            if client is None:
                raise ValueError(
                    f"the ssl_context for the manager at {self.address!r} cannot be used by "
                    "a client (it is a PROTOCOL_TLS_SERVER context); pass a "
                    "(server_context, client_context) pair")
            self._resolved_ssl = client
        return self._resolved_ssl

    # ------------------------------------------------------------ connections

    def conn(self) -> Conn:
        """This thread's connection to the manager (made on first use)."""
        try:
            return self.tls.conn
        except AttributeError:
            return self.connect()

    def open_channel(self, timeout: float | None) -> Any:
        """A new authenticated channel to the manager; errors name the manager address."""
        try:
            return open_channel(self.address, bytes(self.authkey),
                                ssl_context=self.client_ssl(), timeout=timeout)
        except AuthenticationError as e:
            if not isinstance(e, TimeoutError):  # a HandshakeTimeout: the server is stuck
                raise AuthenticationError(
                    f"authentication with the manager at {self.address!r} failed: {e}") from e
            raise ManagerConnectionError(
                f"cannot connect to the manager at {self.address!r} (its handshake timed "
                "out); is the manager process running and responsive?") from e
        except (OSError, EOFError) as e:
            what = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            raise ManagerConnectionError(
                f"cannot connect to the manager at {self.address!r} ({what}); "
                "is the manager process running?") from e

    def connect(self) -> Conn:
        """Open this thread's connection and say hello (learn the server's id and limits)."""
        name = process.current_process().name
        thread = threading.current_thread()
        if thread is not threading.main_thread():
            name += "|" + thread.name
        info = None
        if not self.legacy:
            conn = Conn(self, self.open_channel(self.connect_timeout))
            try:
                info = conn.call(None, "hello", (name,), {})
            except RemoteError as e:
                conn.chan.close()
                if "serializer mismatch" in str(e):
                    raise
                self.legacy = True  # and that server has closed this connection
            except BaseException:
                conn.chan.close()
                raise
        if self.legacy:
            conn = Conn(self, self.open_channel(self.connect_timeout))
            try:
                conn.call(None, "accept_connection", (name,), {}, direct=True)
            except BaseException:
                conn.chan.close()
                raise
        if isinstance(info, dict):
            server_id = info.get("server")
            self.max_message_size = info.get("max_message_size")
            if server_id and self.server_id != server_id:
                self.server_id = server_id
                with _registry_lock:
                    _by_server[server_id] = self
        self.tls.conn = conn
        return conn

    def call(self, ident: Any, methodname: str, args: tuple[Any, ...] = (),
             kwds: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """A request on this thread's connection; returns the result or raises.

        ``timeout`` bounds connecting (if needed) and waiting for the reply.
        """
        if timeout is not None and getattr(self.tls, "conn", None) is None:
            saved = self.connect_timeout
            self.connect_timeout = timeout if saved is None else min(saved, timeout)
            try:
                self.connect()
            finally:
                self.connect_timeout = saved
        return self.conn().call(ident, methodname, args, kwds or {}, timeout=timeout)

    def oneshot_call(self, methodname: str, args: tuple[Any, ...], kwds: dict[str, Any],
                     manager: Any = None, timeout: float | None = None) -> Any:
        """Call one of the server's own functions on a connection of its own (the only way
        a stdlib server accepts them)."""
        conn = Conn(self, self.open_channel(self.connect_timeout if timeout is None else timeout))
        try:
            return conn.call(None, methodname, args, kwds, manager, timeout, direct=True)
        finally:
            conn.chan.close()

    # ------------------------------------------------------------ references

    def give_back(self, ident: Any) -> None:
        """Return one reference to ``ident`` (called by a proxy's finalizer)."""
        if self.closed:
            return
        if self.owner_pid == os.getpid() and util.is_exiting():
            return  # the manager is shut down right after the proxies' finalizers
        conn = getattr(self.tls, "conn", None)
        if conn is not None and not conn.busy:
            try:
                conn.send_decrefs([ident])
                return
            except Exception:
                pass
        with self.lock:
            self.pending.append(ident)
        _register_exit_flush()

    def take_pending(self) -> list[Any]:
        with self.lock:
            ids, self.pending = self.pending, []
        return ids

    def flush_pending(self, timeout: float | None = 2.0) -> None:
        """Send the queued reference returns now (at exit: on a short-lived connection)."""
        if not self.pending or self.closed:
            return
        conn = getattr(self.tls, "conn", None)
        if conn is not None and not conn.busy:
            try:
                conn.send_decrefs([])
                return
            except Exception:
                pass
        ids = self.take_pending()
        if not ids:
            return
        try:
            chan = self.open_channel(timeout)
        except Exception:
            return
        try:
            chan.settimeout(timeout)
            if not self.legacy:
                chan.send_bytes(_codec.new_codec(self.serializer).decref(ids))
        except Exception:
            pass
        finally:
            chan.close()
        if self.legacy:
            for ident in ids:
                try:
                    self.oneshot_call("decref", (ident,), {}, timeout=timeout)
                except Exception:
                    pass

    def close(self) -> None:
        """The manager is gone: forget references and close this thread's connection."""
        self.closed = True
        self.pending = []
        conn = getattr(self.tls, "conn", None)
        if conn is not None:
            conn.discard()
        with _registry_lock:
            if _by_address.get(_addr_key(self.address)) is self:
                del _by_address[_addr_key(self.address)]
            if self.server_id is not None and _by_server.get(self.server_id) is self:
                del _by_server[self.server_id]

    def _reset_after_fork(self) -> None:
        conn = self.tls.__dict__.pop("conn", None)
        if conn is not None:
            conn.chan.close()  # our copy of the parent's socket; close() never shuts it down
        self.lock = threading.RLock()
        self.pending = []
        if self.owner_pid != os.getpid():
            self.owner_pid = None


def endpoint_for(address: Any, authkey: bytes | None = None, *, server_id: str | None = None,
                 ssl_context: Any = None, manager: Any = None,
                 serializer: str | None = None) -> Endpoint:
    """The endpoint of this process for a manager (made on first use).  ``authkey`` and
    ``serializer`` (None: any) must match an existing endpoint's."""
    with _registry_lock:
        if server_id is not None:
            ep = _by_server.get(server_id)
            if (ep is not None and not ep.closed and (authkey is None or ep.authkey == authkey)
                    and (serializer is None or ep.serializer == serializer)):
                return ep
        key = _addr_key(address)
        ep = _by_address.get(key)
        if (ep is not None and not ep.closed and (authkey is None or ep.authkey == authkey)
                and (serializer is None or ep.serializer == serializer)):
            if ssl_context is not None and ep.ssl_context is None:
                ep.ssl_context = ssl_context
            return ep
        if authkey is None:
            authkey = manager._authkey if manager is not None else process.current_process().authkey
        if ssl_context is None and ep is not None:
            ssl_context = ep.ssl_context
        if serializer is None:
            serializer = getattr(manager, "_serializer", None) or "pickle"
        ep = Endpoint(address, authkey, ssl_context, serializer)
        if server_id is not None:
            ep.server_id = server_id
        _by_address[key] = ep
        return ep


def new_endpoint(address: Any, authkey: bytes, ssl_context: Any = None,
                 serializer: str = "pickle") -> Endpoint:
    """A fresh endpoint for a manager object (replacing any older one at that address)."""
    ep = Endpoint(address, authkey, ssl_context, serializer)
    with _registry_lock:
        _by_address[_addr_key(address)] = ep
    return ep


def _register_exit_flush() -> None:
    global _exit_flush_registered
    pid = os.getpid()
    if _exit_flush_registered != pid:
        _exit_flush_registered = pid
        util.Finalize(None, _flush_all_pending, exitpriority=5)


def _flush_all_pending() -> None:
    for ep in list(_all_endpoints):
        try:
            ep.flush_pending()
        except Exception:
            pass


# ==================================================================== connections


class Conn:
    """One thread's connection to a manager."""

    __slots__ = ("ep", "chan", "busy", "_codec")

    def __init__(self, ep: Endpoint, chan: Any) -> None:
        self.ep = ep
        self.chan = chan
        self.busy = False  # a request is on the wire: nothing else may be written or read
        self._codec = _codec.new_codec(ep.serializer)

    def discard(self) -> None:
        """Close the connection and forget it (if it is this thread's)."""
        self.chan.close()
        tls = self.ep.tls
        if getattr(tls, "conn", None) is self:
            del tls.conn

    def _lost(self, exc: BaseException) -> ManagerConnectionError:
        self.discard()
        what = "connection closed" if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
        return ManagerConnectionError(
            f"lost the connection to the manager at {self.ep.address!r} ({what}); "
            "the manager process has probably exited")

    def send_decrefs(self, ids: list[Any]) -> None:
        """Send a one-way message returning references to ``ids`` and any queued ones."""
        if self.ep.pending:
            ids = self.ep.take_pending() + ids
        if not ids:
            return
        if self.ep.legacy:
            for ident in ids:  # a server without one-way messages: a request each
                try:
                    self.ep.oneshot_call("decref", (ident,), {})
                except RemoteError:
                    pass
            return
        self.busy = True
        try:
            self.chan.send_bytes(self._codec.decref(ids))
        except BaseException as e:
            raise self._lost(e) from e
        finally:
            self.busy = False

    def call(self, ident: Any, methodname: str, args: tuple[Any, ...], kwds: dict[str, Any],
             manager: Any = None, timeout: float | None = None, direct: bool = False) -> Any:
        """Send a request and return the result (or raise what the reply says).

        With ``timeout``, a reply that takes longer fails the call (and the connection).
        ``direct``: on this connection even if the server is a legacy one.
        """
        if ident is None and not direct and self.ep.legacy:
            return self.ep.oneshot_call(methodname, args, kwds, manager, timeout)
        data = self._codec.request(ident, methodname, args, kwds)
        ep = self.ep
        limit = ep.max_message_size
        if limit is not None and len(data) > limit:
            raise ValueError(
                f"request of {len(data)} bytes exceeds the max_message_size ({limit}) of "
                f"the manager at {ep.address!r}; start the manager with a larger "
                "max_message_size= (None: no limit) to send it")
        if ep.pending:
            self.send_decrefs([])
        chan = self.chan
        self.busy = True
        try:
            if timeout is not None:
                chan.settimeout(timeout)
            chan.send_bytes(data)
            reply = chan.recv_bytes()
            if timeout is not None:
                chan.settimeout(None)
        except (OSError, EOFError) as e:
            self.busy = False
            raise self._lost(e) from e
        except BaseException:
            # Interrupted mid-request (e.g. KeyboardInterrupt): the stream is out of step.
            self.busy = False
            self.discard()
            raise
        self.busy = False
        try:
            kind, result = self._codec.load_reply(reply)
        except _codec.WrongSerializer as e:
            self.discard()
            raise ValueError(f"the manager at {ep.address!r} replied in another format: "
                             f"{e}") from None
        if kind == _codec.RETURN:
            return result
        if kind == _codec.PROXY:
            return _proxy_from_reply(ep, result, manager)
        try:
            raise convert_to_error(kind, result)
        finally:
            # The traceback holds this frame: a local naming the exception would keep it
            # alive in a reference cycle (gh-106558).
            del result


def _proxy_from_reply(ep: Endpoint, result: Any, manager: Any) -> Any:
    """Build the proxy for a ``#PROXY`` reply; it adopts the reference the server made."""
    exposed, token = result
    if not isinstance(token, Token):  # e.g. the stdlib's Token, from a stdlib server
        token = Token(token.typeid, token.address, token.id)
    token.address = ep.address
    if ep.server_id is not None:
        token.server = ep.server_id
    proxytype = None
    if manager is not None:
        entry = manager._registry.get(token.typeid)
        proxytype = entry[-1] if entry else None
    if proxytype is None:
        proxytype = _proxytypes.get(token.typeid, AutoProxy)
    proxy = proxytype(token, ep.serializer, manager=manager, authkey=ep.authkey,
                      exposed=exposed, incref=False)
    adopt_reference(proxy, ep, token.id)
    return proxy


def adopt_reference(proxy: Any, ep: Endpoint, ident: Any) -> None:
    """Make ``proxy`` own the reference just created for it (or give it back if it can't)."""
    if isinstance(proxy, BaseProxy):
        proxy._adopt()
    else:
        ep.give_back(ident)


# ==================================================================== proxies

_live_proxies: weakref.WeakSet[BaseProxy] = weakref.WeakSet()


class BaseProxy:
    """A reference to an object living in a manager process.

    Calls are forwarded with :meth:`_callmethod`; :meth:`_getvalue` fetches a copy of the
    referent.  Proxies are picklable (they travel as their token) and can be passed to
    child processes, through queues, and into other managed objects.
    """

    _address_to_local: dict[Any, Any] = {}  # the stdlib's name; unused by polyproc
    _mutex = util.ForkAwareThreadLock()
    _exposed_: tuple[str, ...] | None = None
    _method_to_typeid_: dict[str, str] | None = None
    _close: Any = None
    _local_server: Any = None
    _isauto: bool  # set (True) on AutoProxy's proxies only

    def __init__(self, token: Token, serializer: str, manager: Any = None,
                 authkey: bytes | None = None, exposed: Any = None, incref: bool = True,
                 manager_owned: bool = False) -> None:
        self._token = token
        self._id = token.id
        self._manager = manager
        self._serializer = serializer
        self._owned_by_manager = manager_owned
        # The server whose own reference this is (a proxy unpickled in a serving thread).
        self._local_server = serving_server() if manager_owned else None
        ssl_context = getattr(manager, "_ssl_context", None)
        ep = endpoint_for(token.address, authkey, server_id=token.server,
                          ssl_context=ssl_context, manager=manager,
                          serializer=serializer if serializer in _codec.SERIALIZERS else None)
        if token.address != ep.address:
            token.address = ep.address  # the address this process knows the server by
        self._ep = ep
        self._tls = ep.tls
        self._authkey = ep.authkey
        self._idset: set[Any] = set()  # the stdlib's name; unused by polyproc
        if incref:
            self._incref()

    # ------------------------------------------------------------ calls

    def _callmethod(self, methodname: str, args: tuple[Any, ...] = (),
                    kwds: dict[str, Any] | None = None) -> Any:
        """Call ``methodname(*args, **kwds)`` on the referent and return a copy of the result
        (or a proxy, for methods listed in ``method_to_typeid``)."""
        try:
            conn = self._tls.conn
        except AttributeError:
            conn = self._ep.connect()
        return conn.call(self._id, methodname, args, kwds or {}, self._manager)

    def _getvalue(self) -> Any:
        """A copy of the referent."""
        return self._callmethod("#GETVALUE")

    # ------------------------------------------------------------ references

    def _incref(self) -> None:
        server = self._local_server
        if server is not None:
            server.incref(None, self._id)
        else:
            self._ep.call(None, "incref", (self._id,))
        self._adopt()

    def _adopt(self) -> None:
        """Own one reference already counted by the server (given back when collected)."""
        server = self._local_server
        if server is not None:
            self._close = util.Finalize(self, _local_decref, args=(server, self._id))
            return
        self._close = util.Finalize(self, BaseProxy._decref, args=(self._ep, self._id),
                                    exitpriority=10)
        _live_proxies.add(self)

    @staticmethod
    def _decref(ep: Endpoint, ident: Any) -> None:
        ep.give_back(ident)

    def _transfer_ref(self) -> bool:
        """Take a reference on behalf of whoever unpickles this proxy; False if we can't."""
        try:
            server = self._local_server
            if server is not None:
                server.incref(None, self._id)
            else:
                self._ep.call(None, "incref", (self._id,))
            return True
        except Exception as e:
            util.debug("could not take a reference for the receiver of %r: %s", self, e)
            return False

    def _after_fork(self) -> None:
        """Kept for compatibility: polyproc handles forks with ``os.register_at_fork``."""

    # ------------------------------------------------------------ pickling

    def __reduce__(self) -> Any:
        kwds: dict[str, Any] = {}
        if get_spawning_popen() is not None:
            kwds["authkey"] = self._authkey
            spec = self._ep.ssl_context
            if spec is not None and _picklable_factory(spec):
                kwds["ssl"] = spec
            if self._transfer_ref():
                kwds["adopt"] = True
        elif _responding() and self._transfer_ref():
            kwds["adopt"] = True
        if getattr(self, "_isauto", False):
            kwds["exposed"] = self._exposed_
            return RebuildProxy, (AutoProxy, self._token, self._serializer, kwds)
        return RebuildProxy, (type(self), self._token, self._serializer, kwds)

    def __deepcopy__(self, memo: Any) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        """The referent's ``repr`` (or a fall-back if that fails)."""
        try:
            return self._callmethod("__repr__")
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def _local_decref(server: Any, ident: Any) -> None:
    try:
        server.decref(None, ident)
    except Exception:
        pass


def _picklable_factory(spec: Any) -> bool:
    import ssl

    return callable(spec) and not isinstance(spec, ssl.SSLContext)


def RebuildProxy(func: Callable[..., Any], token: Token, serializer: str,  # noqa: N802
                 kwds: dict[str, Any]) -> Any:
    """Unpickle a proxy: ``func(token, serializer, incref=..., **kwds)``."""
    kwds = dict(kwds)
    adopt = kwds.pop("adopt", False)
    ssl_spec = kwds.pop("ssl", None)
    server = serving_server()
    if server is not None and (
        token.server == server.id if token.server is not None else token.address == server.address
    ):
        kwds["manager_owned"] = True
    elif ssl_spec is not None:
        endpoint_for(token.address, kwds.get("authkey"), server_id=token.server,
                     ssl_context=ssl_spec,
                     serializer=serializer if serializer in _codec.SERIALIZERS else None)
    inheriting = getattr(process.current_process(), "_inheriting", False)
    incref = kwds.pop("incref", True) and not adopt and not inheriting
    proxy = func(token, serializer, incref=incref, **kwds)
    if adopt and isinstance(proxy, BaseProxy):
        proxy._adopt()
    return proxy


# ==================================================================== fork handling

_fork_state: tuple[int, list[BaseProxy], set[Endpoint]] | None = None
#: Seconds ``os.fork`` may wait for a manager to take references for the child.
_FORK_TIMEOUT = 5.0


def _before_fork() -> None:
    """Take one reference per live proxy for the child about to be forked."""
    global _fork_state
    _fork_state = None
    proxies = [p for p in list(_live_proxies)
               if p._close is not None and p._close.still_active() and not p._ep.closed]
    if not proxies:
        return
    by_ep: dict[Endpoint, list[Any]] = {}
    for p in proxies:
        by_ep.setdefault(p._ep, []).append(p._id)
    ok = set()
    for ep, ids in by_ep.items():
        try:
            ep.call(None, "incref_many", (ids,), timeout=_FORK_TIMEOUT)
            ok.add(ep)
        except Exception as e:
            util.debug("could not take references for a forked child at %r: %s", ep.address, e)
    _fork_state = (os.getpid(), proxies, ok)


def _after_fork_in_parent() -> None:
    global _fork_state
    _fork_state = None


def _after_fork_in_child() -> None:
    global _registry_lock, _fork_state, _exit_flush_registered
    _registry_lock = threading.RLock()
    _exit_flush_registered = None
    for ep in list(_all_endpoints):
        ep._reset_after_fork()
    state, _fork_state = _fork_state, None
    if state is None:
        return
    _parent, proxies, ok = state
    for p in proxies:
        if p._ep in ok:
            p._adopt()  # own the reference the parent took for us
        else:
            p._close = None  # no reference of our own (like the stdlib's inherited proxies)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


# ==================================================================== proxy types


def MakeProxyType(name: str, exposed: Any, _cache: dict[Any, type[BaseProxy]] = {}  # noqa: B006
                  ) -> type[BaseProxy]:  # noqa: N802
    """A ``BaseProxy`` subclass whose methods are those named in ``exposed``."""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    import sys

    # The caller's module, so that a type assigned to a module-level name pickles by name.
    dic: dict[str, Any] = {"__module__": sys._getframe(1).f_globals.get("__name__", __name__)}
    for meth in exposed:
        dic[meth] = _forwarder(meth)
    dic["_exposed_"] = exposed
    proxy_type: type[BaseProxy] = type(name, (BaseProxy,), dic)
    _cache[(name, exposed)] = proxy_type
    return proxy_type


def _forwarder(name: str) -> Callable[..., Any]:
    def method(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:
        try:
            conn = self._tls.conn
        except AttributeError:
            conn = self._ep.connect()
        return conn.call(self._id, name, args, kwds, self._manager)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Call ``{name}`` on the referent."
    return method


def AutoProxy(token: Token, serializer: str, manager: Any = None,  # noqa: N802
              authkey: bytes | None = None, exposed: Any = None, incref: bool = True,
              manager_owned: bool = False) -> BaseProxy:
    """A proxy whose methods are the referent's public methods (asked from the server if
    ``exposed`` is not given)."""
    if exposed is None:
        ep = endpoint_for(token.address, authkey, server_id=token.server, manager=manager,
                          serializer=serializer if serializer in _codec.SERIALIZERS else None)
        exposed = ep.call(None, "get_methods", (token,))
    if authkey is None and manager is not None:
        authkey = manager._authkey
    proxy_type = MakeProxyType(f"AutoProxy[{token.typeid}]", exposed)
    proxy = proxy_type(token, serializer, manager=manager, authkey=authkey, incref=incref,
                       manager_owned=manager_owned)
    proxy._isauto = True
    return proxy
