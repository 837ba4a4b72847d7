"""The ``serializer='xmlrpclib'`` codec of manager messages: XML-RPC instead of pickle.

Messages are the pickle codec's ones (a request ``[ident, methodname, args, kwds]``, a reply
``[kind, result]``, ``['#DECREF', ids]``), each written as the one parameter of an XML-RPC
``<params>`` document (what ``xmlrpc.client.dumps((message,), allow_none=True)`` writes,
which is also what the stdlib's ``xmlrpclib`` managers send) and read back with
``xmlrpc.client.loads(..., use_builtin_types=True)``.  They travel over the same
authenticated, size-limited channel as pickled ones.  Nothing received is ever unpickled.

What it carries: None, bool, int (any size: beyond 32 bits polyproc writes the
``<biginteger>`` extension that ``xmlrpc.client`` reads), float, str (XML 1.0 characters
only), bytes/bytearray (as bytes), ``datetime.datetime`` (to the second, no time zone),
lists, tuples, sets and frozensets (all as lists), dicts with str keys, and ``xmlrpc.client.Binary``/``DateTime``.
Anything else (instances of other classes, functions, proxies, sets ...) is refused with a
``TypeError`` on the sending side, never silently turned into a dict.  polyproc also
encodes the two things a manager itself needs: tokens (for replies that create proxies)
and exceptions raised by a shared object's method (built-in exceptions and
``queue.Empty``/``queue.Full``/``threading.BrokenBarrierError`` come back as themselves,
others as a ``RemoteError`` naming them).
"""

from __future__ import annotations

import builtins
import re
import xmlrpc.client

from . import wire

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
#: What an exception raised through a manager comes back as (besides builtins').
_KNOWN_EXCEPTIONS = {
    "queue.Empty": "queue.Empty", "_queue.Empty": "queue.Empty",
    "queue.Full": "queue.Full", "threading.BrokenBarrierError": "threading.BrokenBarrierError",
}
#: The key of the structs that stand for what XML-RPC has no type for: a token, or a slice
#: (``l[1:3]`` on a list proxy) given as an argument.
_TAG = "__polyproc__"


def _escape(s: str) -> str:
    # A CR is escaped as a character reference: XML parsers turn a literal one into LF.
    if _NOT_XML.search(s):
        raise ValueError(
            "a str holding a control character (other than tab, LF, CR) or a lone surrogate "
            "cannot be sent with serializer='xmlrpclib' (XML 1.0 cannot carry it): send bytes "
            "instead, or use serializer='pickle'")
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))


class _Marshaller(xmlrpc.client.Marshaller):
    """``xmlrpc.client``'s marshaller, strict: only the types listed in the module docstring
    (plus tokens), any int size, CR kept, and no silent dict-of-``__dict__`` for other
    objects."""

    dispatch = dict(xmlrpc.client.Marshaller.dispatch)

    def __init__(self) -> None:
        super().__init__(None, allow_none=True)

    def _value(self, value: Any, write: Callable[[str], Any]) -> None:
        try:
            f = self.dispatch[type(value)]
        except KeyError:
            if isinstance(value, (xmlrpc.client.Binary, xmlrpc.client.DateTime)):
                f = self.dispatch["_arbitrary_instance"]
            else:
                raise TypeError(_refusal(value)) from None
        f(self, value, write)

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

    def _token(self, token: Any, write: Callable[[str], Any]) -> None:
        self._dict({_TAG: "token", "typeid": token.typeid, "address": token.address,
                    "id": token.id, "server": token.server}, write)

    def _slice(self, value: slice, write: Callable[[str], Any]) -> None:
        self._dict({_TAG: "slice", "args": [value.start, value.stop, value.step]}, write)

    def _instance(self, value: Any, write: Callable[[str], Any]) -> None:
        if isinstance(value, (xmlrpc.client.Binary, xmlrpc.client.DateTime)):
            value.encode(self)  # type: ignore[arg-type]  # writes through self.write
            return
        raise TypeError(_refusal(value))

    def write(self, s: str) -> None:  # used by Binary.encode / DateTime.encode
        self._out(s)

    def dump(self, message: Any) -> str:
        out: list[str] = []
        self._out = out.append
        write = out.append
        write("<params>\n<param>\n")
        self._value(message, write)
        write("</param>\n</params>\n")
        return "".join(out)

    dispatch[int] = _int
    dispatch[str] = _str
    dispatch[list] = _list
    dispatch[tuple] = _list
    dispatch[set] = _list
    dispatch[frozenset] = _list
    dispatch[dict] = _dict
    dispatch[slice] = _slice
    dispatch["_arbitrary_instance"] = _instance


def _register_token_type() -> None:
    from .proxy import Token

    _Marshaller.dispatch[Token] = _Marshaller._token


def _refusal(value: Any) -> str:
    kind = type(value)
    name = kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")
    return (f"cannot send an object of type {name} with serializer='xmlrpclib' (it carries "
            "None, bool, int, float, str, bytes, datetime.datetime, lists, tuples, sets and "
            "dicts with str keys); convert it first, or use serializer='pickle'")


def _encode(message: Any) -> bytes:
    return _Marshaller().dump(message).encode("utf-8")


def _decode(data: Any) -> Any:
    if bytes(data[:1]) != b"<":
        raise wire.WrongSerializer(NAME, "pickle")
    (message,), _method = xmlrpc.client.loads(bytes(data), use_builtin_types=True)
    return message


# ==================================================================== exceptions


def _exception_info(exc: BaseException) -> dict[str, Any]:
    kind = type(exc)
    info: dict[str, Any] = {"type": f"{kind.__module__}.{kind.__qualname__}",
                            "message": _printable(str(exc)), "args": None}
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


def _printable(text: str) -> str:
    return _NOT_XML.sub("?", text)


def _exception_class(name: str) -> type[BaseException] | None:
    module, _, qualname = name.rpartition(".")
    if module == "builtins":
        cls = getattr(builtins, qualname, None)
    else:
        target = _KNOWN_EXCEPTIONS.get(name)
        if target is None:
            return None
        import importlib

        mod_name, _, attr = target.rpartition(".")
        cls = getattr(importlib.import_module(mod_name), attr, None)
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


def _rebuild_token(info: Any) -> Any:
    from .proxy import Token

    address = info.get("address")
    if isinstance(address, list):
        address = tuple(address)
    return Token(info.get("typeid"), address, info.get("id"), info.get("server"))


def _rebuild_slice(info: dict[str, Any]) -> slice:
    args = info.get("args")
    if not isinstance(args, list) or len(args) != 3:
        raise ValueError(f"malformed slice in a manager request: {info!r:.200}")
    return slice(*args)


# ==================================================================== the codec


class XmlCodec:
    """Encodes and decodes manager messages as XML-RPC (see the module docstring).
    Stateless: one instance may serve any number of threads."""

    name = NAME

    def request(self, ident: Any, methodname: str, args: tuple[Any, ...],
                kwds: dict[str, Any]) -> bytes:
        """Encode a request (``TypeError``/``ValueError`` for what XML-RPC cannot carry)."""
        return _encode([ident, methodname, args, kwds])

    def reply(self, kind: str, result: Any) -> bytes:
        """Encode a reply (exceptions and ``#PROXY`` tokens as structs)."""
        if kind == wire.ERROR:
            result = _exception_info(result)
        return _encode([kind, result])

    def decref(self, ids: list[Any]) -> bytes:
        """Encode the one-way message returning references to ``ids``."""
        return _encode([wire.DECREF, ids])

    def load_request(self, data: Any) -> Any:
        """Decode a request (``WrongSerializer`` if it is not XML)."""
        message = _decode(data)
        if not isinstance(message, list) or len(message) not in (2, 4):
            raise ValueError(f"malformed manager request: {message!r:.200}")
        if len(message) == 4 and isinstance(message[2], list):
            message[2] = [_rebuild_slice(a) if type(a) is dict and a.get(_TAG) == "slice"
                          else a for a in message[2]]
        return message

    def load_reply(self, data: Any) -> tuple[str, Any]:
        """Decode a reply into ``(kind, result)`` (exceptions and proxies rebuilt)."""
        message = _decode(data)
        if not isinstance(message, list) or len(message) != 2:
            raise ValueError(f"malformed manager reply: {message!r:.200}")
        kind, result = message
        if kind == wire.ERROR:
            result = _rebuild_exception(result)
        elif kind == wire.PROXY:
            exposed, token = result
            result = (tuple(exposed), _rebuild_token(token))
        return kind, result


_register_token_type()
