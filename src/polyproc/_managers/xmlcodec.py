"""The ``serializer='xmlrpclib'`` codec of manager messages: XML-RPC instead of pickle.

Messages are the pickle codec's ones (a request ``[ident, methodname, args, kwds]``, a reply
``[kind, result]``, ``['#DECREF', ids]``), each written as the one parameter of an XML-RPC
``<params>`` document (what ``xmlrpc.client.dumps((message,), allow_none=True)`` writes,
which is also what the stdlib's ``xmlrpclib`` managers send) with a subclass of
``xmlrpc.client.Marshaller``, and read back with ``xmlrpc.client.loads(...,
use_builtin_types=True)``.  They travel over the same authenticated, size-limited channel
as pickled ones.  Nothing received is ever unpickled, and nothing is imported or called by
a name a peer sent.

What it carries (see docs/shared-state.md): None, bool, int (any size: beyond 32 bits the
``<biginteger>`` extension that ``xmlrpc.client`` reads), float, str (XML 1.0 characters
only; CR kept), bytes/bytearray (as bytes), ``datetime.datetime`` (to the second, no time
zone), lists and tuples (as lists), dicts with str keys, dict views and the built-in
containers' iterators (as lists), and ``xmlrpc.client.Binary``/``DateTime``.  polyproc adds
sets, frozensets, slices and ``NotImplemented`` (structs tagged ``"__polyproc__"``, turned
back into themselves), the tokens of proxies a method returns, and the exceptions a shared
object raises (built-in ones and ``queue.Empty``/``queue.Full``/
``threading.BrokenBarrierError`` come back as themselves, others as a ``RemoteError`` naming
them).  Anything else (other classes' instances, functions, proxies ...) is refused with a
``TypeError`` on the sending side, never silently turned into a dict of its ``__dict__``.
"""

from __future__ import annotations

import builtins
import queue
import re
import threading
import xmlrpc.client

from . import codec

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["XmlCodec", "NAME"]

NAME = "xmlrpclib"
_MAXINT = 2**31 - 1
_MININT = -(2**31)
#: Characters XML 1.0 cannot carry (expat refuses them, even as character references).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: Exceptions rebuilt as themselves besides the built-in ones, by the name they are sent as.
_KNOWN_EXCEPTIONS: dict[str, type[BaseException]] = {
    "_queue.Empty": queue.Empty, "queue.Empty": queue.Empty, "queue.Full": queue.Full,
    "threading.BrokenBarrierError": threading.BrokenBarrierError,
}
#: The key of the structs standing for what XML-RPC has no type for.
_TAG = "__polyproc__"
_BTAG = _TAG.encode()


def _escape(s: str) -> str:
    # A CR is written as a character reference: XML parsers turn a literal one into LF.
    if _NOT_XML.search(s):
        raise ValueError(
            "a str holding a control character (other than tab, LF, CR) or a lone surrogate "
            "cannot be sent with serializer='xmlrpclib' (XML 1.0 cannot carry it): send bytes "
            "instead, or use serializer='pickle'")
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))


def _refusal(value: Any) -> str:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")
    return (f"cannot send an object of type {name} with serializer='xmlrpclib' (it carries "
            "None, bool, int, float, str, bytes, datetime.datetime, lists, tuples, sets and "
            "dicts with str keys); convert it first, or use serializer='pickle'")


class _Marshaller(xmlrpc.client.Marshaller):
    """``xmlrpc.client``'s marshaller, strict and complete for manager messages: only the
    types of the module docstring, any int size, CR kept."""

    dispatch: dict[Any, Any] = dict(xmlrpc.client.Marshaller.dispatch)

    def __init__(self) -> None:
        super().__init__(None, allow_none=True)
        self._out: Callable[[str], Any] = _discard  # dump() sets the real one

    def dump(self, message: Any) -> str:
        """The ``<params>`` document holding ``message``."""
        out: list[str] = []
        self._out = write = out.append
        write("<params>\n<param>\n")
        self._value(message, write)
        write("</param>\n</params>\n")
        return "".join(out)

    def write(self, s: str) -> None:
        """Where ``Binary.encode``/``DateTime.encode`` write."""
        self._out(s)

    def _value(self, value: Any, write: Callable[[str], Any]) -> None:
        try:
            f = self.dispatch[type(value)]
        except KeyError:
            if not isinstance(value, (xmlrpc.client.Binary, xmlrpc.client.DateTime)):
                raise TypeError(_refusal(value)) from None
            f = _Marshaller._wrapper
        f(self, value, write)

    def _wrapper(self, value: Any, write: Callable[[str], Any]) -> None:
        value.encode(self)

    def _refuse(self, value: Any, write: Callable[[str], Any]) -> None:
        raise TypeError(_refusal(value))

    def _int(self, value: int, write: Callable[[str], Any]) -> None:
        tag = "int" if _MININT <= value <= _MAXINT else "biginteger"
        write(f"<value><{tag}>{int(value)}</{tag}></value>\n")

    def _str(self, value: str, write: Callable[[str], Any]) -> None:
        write("<value><string>")
        write(_escape(value))
        write("</string></value>\n")

    def _list(self, value: Any, write: Callable[[str], Any]) -> None:
        i = id(value)
        if i in self.memo:
            raise TypeError("cannot send a list that contains itself with "
                            "serializer='xmlrpclib'")
        self.memo[i] = None
        write("<value><array><data>\n")
        for v in value:
            self._value(v, write)
        write("</data></array></value>\n")
        del self.memo[i]

    def _dict(self, value: dict[Any, Any], write: Callable[[str], Any]) -> None:
        i = id(value)
        if i in self.memo:
            raise TypeError("cannot send a dict that contains itself with "
                            "serializer='xmlrpclib'")
        self.memo[i] = None
        write("<value><struct>\n")
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(
                    f"serializer='xmlrpclib' carries dicts with str keys only (got a key of "
                    f"type {type(k).__name__}); use serializer='pickle' for other keys")
            write("<member>\n<name>")
            write(_escape(k))
            write("</name>\n")
            self._value(v, write)
            write("</member>\n")
        write("</struct></value>\n")
        del self.memo[i]

    def _items(self, value: Any, write: Callable[[str], Any]) -> None:
        self._list(list(value), write)

    def _tagged(self, kind: str, items: Any, write: Callable[[str], Any]) -> None:
        self._dict({_TAG: kind, "items": items}, write)

    def _set(self, value: Any, write: Callable[[str], Any]) -> None:
        self._tagged(type(value).__name__, list(value), write)

    def _slice(self, value: slice, write: Callable[[str], Any]) -> None:
        self._tagged("slice", [value.start, value.stop, value.step], write)

    def _not_implemented(self, value: Any, write: Callable[[str], Any]) -> None:
        self._tagged("NotImplemented", [], write)

    def _token(self, token: Any, write: Callable[[str], Any]) -> None:
        self._tagged("token", [token.typeid, token.address, token.id, token.server], write)

    dispatch[int] = _int
    dispatch[str] = _str
    dispatch[list] = _list
    dispatch[tuple] = _list
    dispatch[dict] = _dict
    dispatch[set] = _set
    dispatch[frozenset] = _set
    dispatch[slice] = _slice
    dispatch[type(NotImplemented)] = _not_implemented
    dispatch["_arbitrary_instance"] = _refuse
    # Dict views and the built-in containers' iterators (what d.keys() or reversed(l)
    # return) travel as lists, as dict views do with pickle.
    _views: tuple[Any, ...] = (
        {}.keys(), {}.values(), {}.items(), iter([]), reversed([]), iter(()),
        iter(set()), iter({}), reversed({}), iter({}.values()), iter({}.items()),
        reversed({}.values()), reversed({}.items()))
    for _t in {type(x) for x in _views}:
        dispatch[_t] = _items
    del _t, _views


def _discard(_: str) -> None:
    pass


def _encode(message: Any) -> bytes:
    return _Marshaller().dump(message).encode("utf-8")


def _untag(obj: Any) -> Any:
    """``obj`` with the tagged structs turned back into what they stand for."""
    t = type(obj)
    if t is list:
        return [_untag(x) for x in obj]
    if t is dict:
        kind = obj.get(_TAG)
        if kind is None:
            return {k: _untag(v) for k, v in obj.items()}
        items = obj.get("items")
        if not isinstance(items, list):
            raise ValueError(f"malformed {_TAG} struct in a manager message: {obj!r:.200}")
        items = _untag(items)
        if kind == "set":
            return set(items)
        if kind == "frozenset":
            return frozenset(items)
        if kind == "slice" and len(items) == 3:
            return slice(*items)
        if kind == "NotImplemented":
            return NotImplemented
        if kind == "token" and len(items) == 4:
            from .proxy import Token

            typeid, address, ident, server = items
            if isinstance(address, list):
                address = tuple(address)
            return Token(typeid, address, ident, server)
        raise ValueError(f"unknown {_TAG} struct in a manager message: {obj!r:.200}")
    return obj


def _decode(data: Any) -> Any:
    data = bytes(data)
    if data[:1] != b"<":
        raise codec.WrongSerializer(NAME, "pickle")
    (message,), _method = xmlrpc.client.loads(data, use_builtin_types=True)
    if _BTAG in data:
        message = _untag(message)
    return message


def _register_token_type() -> None:
    from .proxy import Token

    _Marshaller.dispatch[Token] = _Marshaller._token


# ==================================================================== exceptions


def _exception_info(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    info: dict[str, Any] = {"type": f"{kind.__module__}.{kind.__qualname__}",
                            "message": _NOT_XML.sub("?", str(exc)), "args": None}
    args: Any = exc.args
    try:
        reduced = exc.__reduce__()  # OSError's has the filename, which args lacks
        if reduced[0] is kind and isinstance(reduced[1], tuple):
            args = reduced[1]
    except Exception:
        pass
    try:
        _Marshaller().dump(list(args))
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        info["args"] = list(args)
    return info


def _exception_class(name: str) -> type[BaseException] | None:
    module, _, qualname = name.rpartition(".")
    cls = getattr(builtins, qualname, None) if module == "builtins" else (
        _KNOWN_EXCEPTIONS.get(name))
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls
    return None


def _rebuild_exception(info: Any) -> BaseException:
    from .proxy import RemoteError

    if not isinstance(info, dict):
        return RemoteError(f"the manager reported an error it could not describe: {info!r}\n")
    name = str(info.get("type", "Exception"))
    args = info.get("args")
    cls = _exception_class(name)
    if cls is not None and isinstance(args, list):
        try:
            return cls(*args)
        except Exception:
            pass
    return RemoteError(
        f"{name}: {info.get('message', '')}\n(raised in the manager process; with "
        "serializer='xmlrpclib' only built-in exceptions, queue.Empty, queue.Full and "
        "threading.BrokenBarrierError come back as themselves)\n")


# ==================================================================== the codec


class XmlCodec:
    """Encodes and decodes manager messages as XML-RPC (see the module docstring).
    Stateless: one instance may serve any number of threads."""

    name = NAME

    def request(self, ident: Any, methodname: str, args: tuple[Any, ...],
                kwds: dict[str, Any]) -> bytes:
        """Encode a request (``TypeError``/``ValueError`` for what it cannot carry)."""
        return _encode([ident, methodname, args, kwds])

    def reply(self, kind: str, result: Any) -> bytes:
        """Encode a reply (an exception as a struct describing it)."""
        if kind == codec.ERROR:
            result = _exception_info(result)
        return _encode([kind, result])

    def decref(self, ids: list[Any]) -> bytes:
        """Encode the one-way message returning references to ``ids``."""
        return _encode([codec.DECREF, ids])

    def load_request(self, data: Any) -> Any:
        """Decode a request (``WrongSerializer`` if it is not XML)."""
        message = _decode(data)
        if not isinstance(message, list) or len(message) not in (2, 4):
            raise ValueError(f"malformed manager request: {message!r:.200}")
        return message

    def load_reply(self, data: Any) -> tuple[str, Any]:
        """Decode a reply into ``(kind, result)`` (an exception rebuilt, see above)."""
        message = _decode(data)
        if not isinstance(message, list) or len(message) != 2:
            raise ValueError(f"malformed manager reply: {message!r:.200}")
        kind, result = message
        if kind == codec.ERROR:
            result = _rebuild_exception(result)
        elif kind == codec.PROXY:
            exposed, token = result
            result = (tuple(exposed), token)
        return kind, result


_register_token_type()
