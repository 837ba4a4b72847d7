"""Managers: objects that live in a server process and are used through proxies.

The API of ``multiprocessing.managers``: ``BaseManager`` (``register``, ``start``,
``connect``, ``get_server``, ``shutdown``), ``SyncManager`` (what ``polyproc.Manager()``
returns), ``SharedMemoryManager``, ``BaseProxy`` and the proxy types.  Differences, all
compatible additions:

* Faster: each thread keeps one connection per manager, and creating an object, passing a
  proxy around and releasing it cost at most one round trip (the stdlib opens a new
  authenticated connection for each of these).
* Never hangs on a dead manager: a call fails with :class:`ManagerConnectionError` (both a
  ``ConnectionError`` and an ``EOFError``) naming the manager's address.  A manager process
  exits when the process that started it dies.
* Safe by default: a manager refuses to listen on a non-loopback address with an empty
  authkey (``allow_unauthenticated=True`` opts out); nothing a peer sends is unpickled
  before it authenticates, which it must do within ``handshake_timeout`` (a deadline for
  the whole handshake); ``max_message_size=`` (default 1 GiB) caps a request;
  ``ssl_context=`` adds TLS.  See ``docs/security.md``.
* Nested proxies keep their referents alive: a managed dict holding a managed list holds a
  real reference to it.
* ``serializer='xmlrpclib'`` sends XML-RPC instead of pickles, over the same authenticated,
  size-limited connections (``docs/shared-state.md`` lists what it carries); such a server
  never unpickles.
* Python 3.14's proxy additions on every version: ``SyncManager.set()`` (``SetProxy``),
  ``ListProxy.clear()``/``copy()``, ``DictProxy.fromkeys()``/``|``/``|=``/``reversed()``.
* An unstarted manager raises :class:`ManagerNotStartedError` (a ``ProcessError`` and a
  ``ValueError``) saying to call ``start()``.
"""

from __future__ import annotations

import os
import queue
import signal
import threading

from . import connection, process, reduction, util
from ._exceptions import ProcessError
from ._managers import codec as _codec
from ._managers import proxy as _proxy
from ._managers.proxy import (
    AutoProxy,
    BaseProxy,
    MakeProxyType,
    ManagerConnectionError,
    RebuildProxy,
    RemoteError,
    Token,
    convert_to_error,
    dispatch,
)
from ._managers.proxytypes import (
    AcquirerProxy,
    ArrayProxy,
    BarrierProxy,
    BaseListProxy,
    BasePoolProxy,
    ConditionProxy,
    DictProxy,
    EventProxy,
    IteratorProxy,
    ListProxy,
    NamespaceProxy,
    PoolProxy,
    SetProxy,
    ValueProxy,
)
from ._managers.server import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_MESSAGE_SIZE,
    Server,
    all_methods,
    public_methods,
    run_server_process,
)
from ._wire.security import check_bind_address, split_ssl_context

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = [
    "BaseManager", "SyncManager", "BaseProxy", "Token", "SharedMemoryManager",
    "SharedMemoryServer", "Server", "RemoteError", "ManagerConnectionError", "AutoProxy",
    "MakeProxyType", "RebuildProxy", "Namespace", "Value", "Array", "IteratorProxy",
    "AcquirerProxy", "ConditionProxy", "EventProxy", "BarrierProxy", "NamespaceProxy",
    "ValueProxy", "ListProxy", "BaseListProxy", "DictProxy", "ArrayProxy", "PoolProxy",
    "BasePoolProxy", "State", "dispatch", "convert_to_error", "all_methods", "public_methods",
    "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_HANDSHAKE_TIMEOUT", "DEFAULT_MAX_HANDSHAKES",
    "ManagerNotStartedError", "SetProxy",
]


# Dict views travel as lists (as in the stdlib), so ``d.keys()`` on a DictProxy works.
def _rebuild_as_list(obj: Any) -> Any:
    return list, (list(obj),)


_view_type: type
for _view_type in (type({}.keys()), type({}.values()), type({}.items())):
    reduction.register(_view_type, _rebuild_as_list)
del _view_type


class ManagerNotStartedError(ProcessError, ValueError):
    """A manager that is not started (or has shut down) was asked to create something.
    Both a ``ProcessError`` and a ``ValueError`` (what the standard library's
    ``SharedMemoryManager`` raises)."""


class State:
    """A manager's lifecycle state."""

    __slots__ = ["value"]
    value: int
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


def _check_state_initial(state: State, what: str = "server") -> None:
    if state.value != State.INITIAL:
        if state.value == State.STARTED:
            raise ProcessError(f"Already started {what}")
        if state.value == State.SHUTDOWN:
            raise ProcessError("Manager has shut down")
        raise ProcessError(f"Unknown state {state.value!r}")


class BaseManager:
    """Starts (or connects to) a manager server and creates shared objects in it.

    ``address`` is where the server listens: None for a new Unix socket, a path, or a
    ``(host, port)`` pair.  ``authkey`` (default: this process's authkey) must be known by
    every client.  ``serializer``: ``'pickle'`` (default) or ``'xmlrpclib'`` (every manager
    object talking to one server must use the same).  polyproc additions: ``ssl_context``
    (an ``ssl.SSLContext``, a ``(server_context, client_context)`` pair, or a zero-argument
    callable returning one:
    TLS on every connection), ``max_message_size`` (bytes, default
    ``DEFAULT_MAX_MESSAGE_SIZE`` = 1 GiB, None: no limit; longer requests are refused and
    the sender is disconnected), ``allow_unauthenticated`` (allow an empty authkey on a
    non-loopback address), ``connect_timeout`` and ``handshake_timeout`` (seconds; the
    latter is a deadline for a peer's whole handshake), ``max_handshakes`` (unfinished
    handshakes at once; the oldest is dropped beyond it).
    """

    _registry: dict[str, tuple[Any, ...]] = {}
    _Server = Server

    def __init__(
        self,
        address: Any = None,
        authkey: bytes | None = None,
        serializer: str = "pickle",
        ctx: Any = None,
        *,
        shutdown_timeout: float = 1.0,
        ssl_context: Any = None,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        allow_unauthenticated: bool = False,
        connect_timeout: float | None = 20.0,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    ) -> None:
        if authkey is None:
            authkey = process.current_process().authkey
        if not isinstance(authkey, bytes):
            raise TypeError(f"authkey should be a byte string, not {type(authkey).__name__}")
        _codec.check_serializer(serializer)
        if max_message_size is not None and max_message_size < 1:
            raise ValueError("max_message_size must be a positive number of bytes or None")
        self._address = address
        self._authkey = process.AuthenticationString(authkey)
        self._state = State()
        self._state.value = State.INITIAL
        self._serializer = serializer
        if ctx is None:
            from .context import _default_context

            ctx = _default_context.get_context()
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout
        self._ssl_context = ssl_context
        self._max_message_size = max_message_size
        self._allow_unauthenticated = allow_unauthenticated
        self._connect_timeout = connect_timeout
        self._handshake_timeout = handshake_timeout
        self._max_handshakes = max_handshakes
        self._process: Any = None
        self._ep: _proxy.Endpoint | None = None

    # ---------------------------------------------------------------- helpers

    def _server_options(self) -> dict[str, Any]:
        return {
            "ssl_context": self._ssl_context,
            "max_message_size": self._max_message_size,
            "allow_unauthenticated": self._allow_unauthenticated,
            "handshake_timeout": self._handshake_timeout,
            "max_handshakes": self._max_handshakes,
        }

    def _endpoint(self) -> _proxy.Endpoint:
        ep = self._ep
        if ep is None or ep.closed and self._state.value != State.SHUTDOWN:
            ep = _proxy.new_endpoint(self._address, self._authkey, self._ssl_context,
                                     self._serializer)
            ep.connect_timeout = self._connect_timeout
            self._ep = ep
        return ep

    # ---------------------------------------------------------------- lifecycle

    def get_server(self) -> Server:
        """A server for this manager's registry, bound to ``address`` (call
        ``serve_forever()`` on it)."""
        _check_state_initial(self._state)
        return self._Server(self._registry, self._address, self._authkey, self._serializer,
                            **self._server_options())

    def connect(self) -> None:
        """Connect to a manager server already running at ``address``."""
        self._endpoint().call(None, "dummy")
        self._state.value = State.STARTED

    def start(self, initializer: Callable[..., object] | None = None,
              initargs: Iterable[Any] = ()) -> None:
        """Start a server process for this manager (``initializer(*initargs)`` runs in it
        first)."""
        _check_state_initial(self._state)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        check_bind_address(self._address, self._authkey,
                           allow_unauthenticated=self._allow_unauthenticated,
                           what=f"manager ({type(self).__name__})")
        if self._ssl_context is not None:
            split_ssl_context(self._ssl_context)  # fail early on a malformed argument
            if self._ctx.get_start_method() != "fork" and not _is_factory(self._ssl_context):
                raise ValueError(
                    "an ssl.SSLContext cannot be sent to a manager process started with "
                    f"{self._ctx.get_start_method()!r}: pass a picklable zero-argument "
                    "callable that returns the context(s), or use the fork start method")
        reader, writer = connection.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=type(self)._run_server,
            args=(self._registry, self._address, self._authkey, self._serializer, writer,
                  initializer, tuple(initargs), self._server_options()),
        )
        ident = ":".join(str(i) for i in proc._identity)
        proc.name = type(self).__name__ + "-" + ident
        proc.start()
        self._process = proc
        writer.close()
        try:
            kind, value = _await_startup(reader, proc)
        finally:
            reader.close()
        if kind != "#OK":
            proc.join(self._shutdown_timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
            self._state.value = State.SHUTDOWN
            raise value
        self._address = value
        self._state.value = State.STARTED
        ep = self._endpoint()
        ep.owner_pid = os.getpid()
        self.shutdown = util.Finalize(  # type: ignore[method-assign]
            self, type(self)._finalize_manager,
            args=(proc, self._address, self._authkey, self._state, ep, self._shutdown_timeout),
            exitpriority=0,
        )

    @classmethod
    def _run_server(cls, registry: dict[str, Any], address: Any, authkey: bytes,
                    serializer: str, writer: Any, initializer: Any = None,
                    initargs: tuple[Any, ...] = (), options: dict[str, Any] | None = None
                    ) -> None:
        """Run in the manager process: make the server, report its address, serve."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent
        try:
            if initializer is not None:
                initializer(*initargs)
            server = cls._Server(registry, address, authkey, serializer, **(options or {}))
        except BaseException as e:
            try:
                writer.send(("#ERROR", e))
            except Exception:
                writer.send(("#ERROR", RuntimeError(f"manager failed to start: {e!r}")))
            writer.close()
            return
        writer.send(("#OK", server.address))
        writer.close()
        util.info("manager serving at %r", server.address)
        run_server_process(server, watch_parent=True)

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> tuple[Token, tuple[str, ...]]:
        """Create a shared object; return its token and exposed methods.

        The object starts with one reference, owned by the proxy the caller makes (see
        ``register``'s generated methods).
        """
        self._check_started()
        ep = self._endpoint()
        ident, exposed = ep.call(None, "create", (typeid, *args), kwds)
        return Token(typeid, self._address, ident, ep.server_id), exposed

    def _check_started(self) -> None:
        if self._state.value != State.STARTED:
            if self._state.value == State.SHUTDOWN:
                raise ManagerNotStartedError(f"{type(self).__name__} has shut down")
            raise ManagerNotStartedError(
                f"{type(self).__name__} is not started: call start() first (or connect() to "
                "a running manager server), or use the manager in a with block")

    def join(self, timeout: float | None = None) -> None:
        """Wait for the manager process (if this object started one) to exit."""
        proc = self._process
        if proc is not None:
            if getattr(proc, "_closed", False):
                self._process = None
                return
            proc.join(timeout)
            if not proc.is_alive():
                self._process = None

    def _debug_info(self) -> str:
        """The server's description of its shared objects."""
        return self._endpoint().call(None, "debug_info")

    def _number_of_objects(self) -> int:
        """How many shared objects the server holds."""
        return self._endpoint().call(None, "number_of_objects")

    def __enter__(self) -> BaseManager:
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value != State.STARTED:
            if self._state.value == State.SHUTDOWN:
                raise ProcessError("Manager has shut down")
            raise ProcessError(f"Unknown state {self._state.value!r}")
        return self

    def __exit__(self, exc_type: object, exc_val: object, exc_tb: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop the manager process (only for a manager started with ``start()``)."""
        # Replaced by a Finalize in start(); a connected (not started) manager only forgets
        # its connection.
        if self._ep is not None and self._state.value == State.STARTED:
            self._ep.close()
        if self._state.value == State.STARTED:
            self._state.value = State.SHUTDOWN

    @staticmethod
    def _finalize_manager(proc: Any, address: Any, authkey: bytes, state: State,
                          ep: _proxy.Endpoint, shutdown_timeout: float) -> None:
        """Shut the manager process down (registered as a finalizer)."""
        if proc.is_alive():
            util.info("sending shutdown message to manager")
            try:
                chan = ep.open_channel(max(shutdown_timeout, 1.0))
                try:
                    chan.settimeout(max(shutdown_timeout, 1.0))
                    chan.send_bytes(_codec.new_codec(ep.serializer).request(
                        None, "shutdown", (), {}))
                    chan.recv_bytes()
                finally:
                    chan.close()
            except Exception:
                pass
            proc.join(timeout=shutdown_timeout)
            if proc.is_alive():
                util.info("manager still alive")
                proc.terminate()
                proc.join(timeout=shutdown_timeout)
                if proc.is_alive():
                    util.info("manager still alive after terminate")
                    proc.kill()
                    proc.join()
        state.value = State.SHUTDOWN
        ep.close()
        if not proc.is_alive():
            try:
                proc.close()  # release its fds now, not at interpreter teardown
            except ValueError:
                pass

    @property
    def address(self) -> Any:
        """The server's address (the bound one, once started)."""
        return self._address

    @classmethod
    def register(cls, typeid: str, callable: Callable[..., Any] | None = None,  # noqa: A002
                 proxytype: Any = None, exposed: Iterable[str] | None = None,
                 method_to_typeid: dict[str, str] | None = None,
                 create_method: bool = True) -> None:
        """Register ``typeid``: the server makes its objects with ``callable`` and clients
        use them through ``proxytype`` (default: an auto-generated proxy of the public
        methods, or ``exposed``).  ``method_to_typeid`` maps method names to the typeid of
        the proxy their result is returned as.  With ``create_method`` the manager gets a
        method named ``typeid`` that creates an object and returns its proxy."""
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in list(method_to_typeid.items()):
                if type(key) is not str or type(value) is not str:
                    raise TypeError(f"method_to_typeid must map str to str, got {key!r}: {value!r}")
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)
        _proxy._proxytypes[typeid] = proxytype

        if create_method:
            def temp(self: BaseManager, /, *args: Any, **kwds: Any) -> Any:
                util.debug("requesting creation of a shared %r object", typeid)
                token, exp = self._create(typeid, *args, **kwds)
                proxy = proxytype(token, self._serializer, manager=self,
                                  authkey=self._authkey, exposed=exp, incref=False)
                _proxy.adopt_reference(proxy, self._endpoint(), token.id)
                return proxy

            temp.__name__ = temp.__qualname__ = typeid
            temp.__doc__ = f"Create a shared {typeid!r} object and return a proxy for it."
            setattr(cls, typeid, temp)


def wire_dumps(obj: Any) -> bytes:
    """Pickle a manager message (helper for code that talks to a server directly)."""
    import pickle

    return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def _is_factory(spec: Any) -> bool:
    import ssl

    return callable(spec) and not isinstance(spec, ssl.SSLContext)


def _await_startup(reader: Any, proc: Any) -> tuple[str, Any]:
    """The manager process's first message; an error if it dies first (never hangs)."""
    while True:
        if reader.poll(0.1):
            try:
                return reader.recv()
            except EOFError:
                break
        if not proc.is_alive():
            if reader.poll(0):
                try:
                    return reader.recv()
                except EOFError:
                    pass
            break
    proc.join(1.0)
    return "#ERROR", ProcessError(
        f"the manager process exited during start-up (exit code {proc.exitcode})")


# ==================================================================== shared types


class Namespace:
    """A plain attribute holder (what ``SyncManager.Namespace`` creates)."""

    def __init__(self, /, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def __repr__(self) -> str:
        items = [f"{name}={value!r}" for name, value in self.__dict__.items()
                 if not name.startswith("_")]
        items.sort()
        return f"{type(self).__name__}({', '.join(items)})"


class Value:
    """A value with a type code (what ``SyncManager.Value`` creates); ``lock`` is ignored."""

    def __init__(self, typecode: Any, value: Any, lock: Any = True) -> None:
        self._typecode = typecode
        self._value = value

    def get(self) -> Any:
        """The value."""
        return self._value

    def set(self, value: Any) -> None:
        """Replace the value."""
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self._value!r})"

    value = property(get, set)


def Array(typecode: str, sequence: Iterable[Any], lock: Any = True) -> Any:  # noqa: N802
    """An ``array.array`` (what ``SyncManager.Array`` creates); ``lock`` is ignored."""
    import array

    return array.array(typecode, sequence)


def _make_pool(*args: Any, **kwds: Any) -> Any:
    from .pool import Pool

    return Pool(*args, **kwds)


# ==================================================================== proxy types

# (defined in polyproc._managers.proxytypes, imported above)


# ==================================================================== SyncManager


class SyncManager(BaseManager):
    """A manager for the synchronization primitives of ``threading`` plus ``dict``,
    ``list``, ``Namespace``, ``Value``, ``Array``, queues and ``Pool``.

    ``polyproc.Manager()`` returns a started one.
    """

    if TYPE_CHECKING:
        def Queue(self, maxsize: int = 0) -> Any: ...  # noqa: N802
        def JoinableQueue(self, maxsize: int = 0) -> Any: ...  # noqa: N802
        def Event(self) -> EventProxy: ...  # noqa: N802
        def Lock(self) -> AcquirerProxy: ...  # noqa: N802
        def RLock(self) -> AcquirerProxy: ...  # noqa: N802
        def Semaphore(self, value: int = 1) -> AcquirerProxy: ...  # noqa: N802
        def BoundedSemaphore(self, value: int = 1) -> AcquirerProxy: ...  # noqa: N802
        def Condition(self, lock: Any = None) -> ConditionProxy: ...  # noqa: N802
        def Barrier(self, parties: int, action: Any = None,  # noqa: N802
                    timeout: float | None = None) -> BarrierProxy: ...
        def Pool(self, processes: int | None = None, *args: Any, **kwds: Any) -> PoolProxy: ...  # noqa: N802
        def list(self, sequence: Iterable[Any] = ()) -> Any: ...
        def dict(self, *args: Any, **kwds: Any) -> Any: ...
        def set(self, iterable: Iterable[Any] = ()) -> SetProxy: ...
        def Value(self, typecode: Any, value: Any, lock: Any = True) -> ValueProxy: ...  # noqa: N802
        def Array(self, typecode: Any, sequence: Any, lock: Any = True) -> Any: ...  # noqa: N802
        def Namespace(self, **kwds: Any) -> NamespaceProxy: ...  # noqa: N802


SyncManager.register("Queue", queue.Queue)
SyncManager.register("JoinableQueue", queue.Queue)
SyncManager.register("Event", threading.Event, EventProxy)
SyncManager.register("Lock", threading.Lock, AcquirerProxy)
SyncManager.register("RLock", threading.RLock, AcquirerProxy)
SyncManager.register("Semaphore", threading.Semaphore, AcquirerProxy)
SyncManager.register("BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy)
SyncManager.register("Condition", threading.Condition, ConditionProxy)
SyncManager.register("Barrier", threading.Barrier, BarrierProxy)
SyncManager.register("Pool", _make_pool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("set", set, SetProxy)
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", Array, ArrayProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)

# types returned by methods of PoolProxy (and DictProxy.__iter__)
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)


# ==================================================================== shared memory


class _SharedMemoryTracker:
    """The segment names a SharedMemoryServer unlinks when it stops."""

    def __init__(self, name: str, segment_names: list[str] | None = None) -> None:
        self.shared_memory_context_name = name
        self.segment_names = list(segment_names or [])
        self._lock = threading.Lock()

    def register_segment(self, segment_name: str) -> None:
        """Track ``segment_name``."""
        with self._lock:
            self.segment_names.append(segment_name)

    def destroy_segment(self, segment_name: str) -> None:
        """Unlink ``segment_name`` and stop tracking it."""
        with self._lock:
            self.segment_names.remove(segment_name)
        _unlink_segment(segment_name)

    def unlink(self) -> None:
        """Unlink every tracked segment."""
        with self._lock:
            names, self.segment_names = self.segment_names, []
        for name in names:
            _unlink_segment(name)

    def __getstate__(self) -> tuple[str, list[str]]:
        return (self.shared_memory_context_name, self.segment_names)

    def __setstate__(self, state: tuple[str, list[str]]) -> None:
        self.__init__(*state)  # type: ignore[misc]


def _unlink_segment(name: str) -> None:
    from .shared_memory import SharedMemory

    try:
        segment = SharedMemory(name)
    except FileNotFoundError:
        return  # already unlinked by a client
    segment.close()
    try:
        segment.unlink()
    except FileNotFoundError:
        pass


class SharedMemoryServer(Server):
    """A manager server that also unlinks the shared memory segments its clients made, when
    it stops (shut down, or its parent died)."""

    public = Server.public + ["track_segment", "release_segment", "list_segments"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        address = self.address
        if isinstance(address, bytes):
            address = os.fsdecode(address)
        self.shared_memory_context = _SharedMemoryTracker(f"shm_{address}_{os.getpid()}")

    def create(self, c: Any, typeid: str, /, *args: Any, **kwargs: Any) -> Any:
        """Create a shared object (proxy types marked ``_shared_memory_proxy`` get the
        segment tracker as ``shared_memory_context``)."""
        if hasattr(self.registry[typeid][-1], "_shared_memory_proxy"):
            kwargs["shared_memory_context"] = self.shared_memory_context
        return Server.create(self, c, typeid, *args, **kwargs)

    def _on_stop(self) -> None:
        self.shared_memory_context.unlink()

    def track_segment(self, c: Any, segment_name: str) -> None:
        """Unlink ``segment_name`` when the server stops."""
        self.shared_memory_context.register_segment(segment_name)

    def release_segment(self, c: Any, segment_name: str) -> None:
        """Unlink ``segment_name`` now."""
        self.shared_memory_context.destroy_segment(segment_name)

    def list_segments(self, c: Any) -> list[str]:
        """Names of the segments the server will unlink."""
        return list(self.shared_memory_context.segment_names)


class SharedMemoryManager(BaseManager):
    """A manager whose ``SharedMemory(size)`` and ``ShareableList(sequence)`` make shared
    memory segments that are unlinked when the manager shuts down."""

    _Server = SharedMemoryServer

    def get_server(self) -> Server:
        """A ``SharedMemoryServer`` bound to ``address``."""
        _check_state_initial(self._state, "SharedMemoryServer")
        return self._Server(self._registry, self._address, self._authkey, self._serializer,
                            **self._server_options())

    def _track(self, name: str, unlink: Callable[[], None]) -> None:
        try:
            self._endpoint().call(None, "track_segment", (name,))
        except BaseException:
            unlink()
            raise

    def SharedMemory(self, size: int) -> Any:  # noqa: N802
        """A new ``SharedMemory`` block of ``size`` bytes, tracked by the manager."""
        from .shared_memory import SharedMemory

        self._check_started()
        sms = SharedMemory(None, create=True, size=size)
        self._track(sms.name, sms.unlink)
        return sms

    def ShareableList(self, sequence: Iterable[Any] | None) -> Any:  # noqa: N802
        """A new ``ShareableList`` holding ``sequence``, tracked by the manager."""
        from .shared_memory import ShareableList

        self._check_started()
        sl = ShareableList(sequence)
        self._track(sl.shm.name, sl.shm.unlink)
        return sl
