"""The proxy types of ``polyproc.managers`` (``SyncManager``'s and ``Pool``'s).

Each forwards its methods to the referent in the manager process through
:meth:`~polyproc._managers.proxy.BaseProxy._callmethod`.  They are re-exported by
:mod:`polyproc.managers` and report that module as theirs (names in pickles and reprs stay
``polyproc.managers.ListProxy`` etc.).
"""

from __future__ import annotations

import collections.abc
import time
import types

from .proxy import BaseProxy, MakeProxyType

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "IteratorProxy", "AcquirerProxy", "ConditionProxy", "EventProxy", "BarrierProxy",
    "NamespaceProxy", "ValueProxy", "BaseListProxy", "ListProxy", "DictProxy", "SetProxy",
    "ArrayProxy", "BasePoolProxy", "PoolProxy",
]


class IteratorProxy(BaseProxy):
    """Proxy of an iterator or generator."""

    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self, *args: Any) -> Any:
        return self._callmethod("__next__", args)

    def send(self, *args: Any) -> Any:
        """Send a value into the generator."""
        return self._callmethod("send", args)

    def throw(self, *args: Any) -> Any:
        """Raise an exception inside the generator."""
        return self._callmethod("throw", args)

    def close(self, *args: Any) -> Any:
        """Close the generator."""
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    """Proxy of a lock or semaphore."""

    _exposed_: tuple[str, ...] = ("acquire", "release")

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire (waiting up to ``timeout`` seconds if ``blocking``)."""
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod("acquire", args)

    def release(self) -> None:
        """Release."""
        return self._callmethod("release")

    def __enter__(self) -> bool:
        return self._callmethod("acquire")

    def __exit__(self, exc_type: object, exc_val: object, exc_tb: object) -> None:
        return self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    """Proxy of a condition variable."""

    _exposed_ = ("acquire", "release", "wait", "notify", "notify_all")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait to be notified (up to ``timeout`` seconds)."""
        return self._callmethod("wait", (timeout,))

    def notify(self, n: int = 1) -> None:
        """Wake up ``n`` waiters."""
        return self._callmethod("notify", (n,))

    def notify_all(self) -> None:
        """Wake up every waiter."""
        return self._callmethod("notify_all")

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait until ``predicate()`` is true (up to ``timeout`` seconds); return its value."""
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    """Proxy of an event."""

    _exposed_ = ("is_set", "set", "clear", "wait")

    def is_set(self) -> bool:
        """Whether the flag is set."""
        return self._callmethod("is_set")

    def set(self) -> None:
        """Set the flag."""
        return self._callmethod("set")

    def clear(self) -> None:
        """Clear the flag."""
        return self._callmethod("clear")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set (up to ``timeout`` seconds)."""
        return self._callmethod("wait", (timeout,))


class BarrierProxy(BaseProxy):
    """Proxy of a barrier."""

    _exposed_ = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout: float | None = None) -> int:
        """Wait for all parties."""
        return self._callmethod("wait", (timeout,))

    def abort(self) -> None:
        """Put the barrier into the broken state."""
        return self._callmethod("abort")

    def reset(self) -> None:
        """Return the barrier to its initial state."""
        return self._callmethod("reset")

    @property
    def parties(self) -> int:
        """Number of parties needed."""
        return self._callmethod("__getattribute__", ("parties",))

    @property
    def n_waiting(self) -> int:
        """Number of parties waiting."""
        return self._callmethod("__getattribute__", ("n_waiting",))

    @property
    def broken(self) -> bool:
        """Whether the barrier is broken."""
        return self._callmethod("__getattribute__", ("broken",))


class NamespaceProxy(BaseProxy):
    """Proxy of a namespace: attribute access is forwarded (names starting with ``_`` are
    the proxy's own)."""

    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key: str) -> Any:
        if key[0] == "_":
            return object.__getattribute__(self, key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__getattribute__", (key,))

    def __setattr__(self, key: str, value: Any) -> None:
        if key[0] == "_":
            return object.__setattr__(self, key, value)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key[0] == "_":
            return object.__delattr__(self, key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__delattr__", (key,))


class ValueProxy(BaseProxy):
    """Proxy of a ``Value``."""

    _exposed_ = ("get", "set")

    def get(self) -> Any:
        """The value."""
        return self._callmethod("get")

    def set(self, value: Any) -> None:
        """Replace the value."""
        return self._callmethod("set", (value,))

    value = property(get, set)

    __class_getitem__: Any = classmethod(types.GenericAlias)


# The list, dict and set proxies have the methods of Python 3.14's on every version:
# ListProxy.clear()/copy(); DictProxy.fromkeys(), reversed(d), d | x, x | d, d |= x; and
# SetProxy (SyncManager.set()).  Each is registered with its collections.abc class.

BaseListProxy = MakeProxyType("BaseListProxy", (
    "__add__", "__contains__", "__delitem__", "__getitem__", "__imul__", "__len__",
    "__mul__", "__reversed__", "__rmul__", "__setitem__",
    "append", "clear", "copy", "count", "extend", "index", "insert", "pop", "remove",
    "reverse", "sort",
))


class ListProxy(BaseListProxy):  # type: ignore[valid-type, misc]
    """Proxy of a list.  Iterating asks for one item at a time (``__getitem__``), so it sees
    changes made meanwhile; ``copy()`` and ``[:]`` fetch the whole list at once."""

    def __iadd__(self, value: Any) -> ListProxy:
        self._callmethod("extend", (value,))
        return self

    def __imul__(self, value: Any) -> ListProxy:
        self._callmethod("__imul__", (value,))
        return self

    def __reversed__(self) -> Any:
        # iter(): with serializer='xmlrpclib' the reversed items come as a list
        return iter(self._callmethod("__reversed__"))

    __class_getitem__: Any = classmethod(types.GenericAlias)


_BaseDictProxy = MakeProxyType("_BaseDictProxy", (
    "__contains__", "__delitem__", "__getitem__", "__ior__", "__iter__", "__len__",
    "__or__", "__reversed__", "__ror__", "__setitem__",
    "clear", "copy", "fromkeys", "get", "items", "keys", "pop", "popitem", "setdefault",
    "update", "values",
))


class DictProxy(_BaseDictProxy):  # type: ignore[valid-type, misc]
    """Proxy of a dict.  ``iter(d)`` walks the dict in the manager (an iterator proxy);
    ``reversed(d)``, ``d | other`` and ``other | d`` return local copies; ``d |= other``
    updates the shared dict; ``d.fromkeys(...)`` returns a new (local) dict."""

    _method_to_typeid_ = {"__iter__": "Iterator"}

    def __ior__(self, value: Any) -> DictProxy:
        self._callmethod("__ior__", (value,))
        return self

    def __reversed__(self) -> Any:
        # iter(): with serializer='xmlrpclib' the reversed keys come as a list
        return iter(self._callmethod("__reversed__"))

    __class_getitem__: Any = classmethod(types.GenericAlias)


_BaseSetProxy = MakeProxyType("_BaseSetProxy", (
    "__and__", "__contains__", "__ge__", "__gt__", "__iand__", "__ior__", "__isub__",
    "__iter__", "__ixor__", "__le__", "__len__", "__lt__", "__or__", "__rand__", "__ror__",
    "__rsub__", "__rxor__", "__sub__", "__xor__",
    "add", "clear", "copy", "difference", "difference_update", "discard", "intersection",
    "intersection_update", "isdisjoint", "issubset", "issuperset", "pop", "remove",
    "symmetric_difference", "symmetric_difference_update", "union", "update",
))


class SetProxy(_BaseSetProxy):  # type: ignore[valid-type, misc]
    """Proxy of a set (what ``SyncManager.set()`` returns).  Operators and methods that
    make a new set (``s | x``, ``s.union(x)``, ``s.copy()`` ...) return local sets; the
    in-place ones (``s |= x``, ``s.update(x)`` ...) change the shared set.  ``iter(s)``
    iterates over a snapshot (one round trip)."""

    def __iter__(self) -> Any:
        return iter(self._callmethod("copy"))

    def __ior__(self, value: Any) -> SetProxy:
        self._callmethod("__ior__", (value,))
        return self

    def __iand__(self, value: Any) -> SetProxy:
        self._callmethod("__iand__", (value,))
        return self

    def __ixor__(self, value: Any) -> SetProxy:
        self._callmethod("__ixor__", (value,))
        return self

    def __isub__(self, value: Any) -> SetProxy:
        self._callmethod("__isub__", (value,))
        return self

    __class_getitem__: Any = classmethod(types.GenericAlias)


ArrayProxy = MakeProxyType("ArrayProxy", ("__len__", "__getitem__", "__setitem__"))


BasePoolProxy = MakeProxyType("PoolProxy", (
    "apply", "apply_async", "close", "imap", "imap_unordered", "join",
    "map", "map_async", "starmap", "starmap_async", "terminate",
))
BasePoolProxy._method_to_typeid_ = {
    "apply_async": "AsyncResult",
    "map_async": "AsyncResult",
    "starmap_async": "AsyncResult",
    "imap": "Iterator",
    "imap_unordered": "Iterator",
}


class PoolProxy(BasePoolProxy):  # type: ignore[valid-type, misc]
    """Proxy of a process pool (``terminate()`` on leaving a ``with`` block)."""

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, exc_type: object, exc_val: object, exc_tb: object) -> None:
        self.terminate()

collections.abc.MutableSequence.register(BaseListProxy)
collections.abc.MutableMapping.register(DictProxy)
collections.abc.MutableSet.register(SetProxy)

for _name in __all__:
    globals()[_name].__module__ = "polyproc.managers"
del _name
