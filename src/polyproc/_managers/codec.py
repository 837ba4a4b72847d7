"""Pickling of manager requests and replies.

Messages are the stdlib's: a request is ``(ident, methodname, args, kwds)`` (``ident`` None
for the server's own functions) and a reply is ``(kind, result)`` with kind ``'#RETURN'``,
``'#ERROR'``, ``'#TRACEBACK'``, ``'#UNSERIALIZABLE'`` or ``'#PROXY'``.  polyproc adds one
message that gets no reply: ``('#DECREF', [ident, ...])``.

Pickling is the hot path of a proxy call, so a :class:`Dumper` reuses one pickler (with
polyproc's reducers) per connection instead of building one per message, and messages made
only of plain scalars skip even that.

A manager's ``serializer`` picks the codec: ``'pickle'`` (a :class:`Dumper`) or
``'xmlrpclib'`` (:class:`polyproc._managers.xmlcodec.XmlCodec`).  Both offer ``request``,
``reply``, ``decref``, ``load_request`` and ``load_reply``; :func:`new_codec` makes one.
Each recognises the other's messages by their first byte (a pickle starts with ``0x80``,
an XML-RPC document with ``<``) and raises :class:`WrongSerializer` instead of decoding them.
"""

from __future__ import annotations

import io
import pickle

from .. import reduction

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Dumper", "loads", "DECREF", "RETURN", "ERROR", "TRACEBACK", "UNSERIALIZABLE",
           "PROXY", "SERIALIZERS", "WrongSerializer", "check_serializer", "new_codec"]

RETURN = "#RETURN"
ERROR = "#ERROR"
TRACEBACK = "#TRACEBACK"
UNSERIALIZABLE = "#UNSERIALIZABLE"
PROXY = "#PROXY"
DECREF = "#DECREF"

loads = pickle.loads
_plain_dumps = pickle.dumps
_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Types that pickle the same with or without polyproc's reducers.
_SCALARS: frozenset[type] = frozenset({int, float, str, bytes, bool, type(None), complex})
_FALLBACK_ERRORS = (pickle.PicklingError, AttributeError, TypeError)
#: The ``serializer=`` values managers accept.
SERIALIZERS = ("pickle", "xmlrpclib")


class WrongSerializer(ValueError):
    """A manager message in the other serializer's format than the one expected.

    ``expected`` is the receiver's serializer, ``peer`` the one the message was written
    with."""

    def __init__(self, expected: str, peer: str) -> None:
        super().__init__(
            f"serializer mismatch: got a {peer!r} message where {expected!r} ones were "
            f"expected; give every manager object that talks to this server "
            f"serializer={expected!r} (or start the server with serializer={peer!r})")
        self.expected = expected
        self.peer = peer


def check_serializer(serializer: object) -> str:
    """``serializer`` if managers support it, else ``ValueError`` saying which they do."""
    if serializer not in SERIALIZERS:
        raise ValueError(f"unsupported serializer {serializer!r}: polyproc managers support "
                         "'pickle' and 'xmlrpclib'")
    return serializer


def new_codec(serializer: str) -> Any:
    """A codec for ``serializer`` (a :class:`Dumper` per connection for pickle)."""
    if serializer == "pickle":
        return Dumper()
    if serializer == "xmlrpclib":
        from .xmlcodec import XmlCodec

        return XmlCodec()
    check_serializer(serializer)
    raise AssertionError(serializer)  # pragma: no cover


def _load_pickle(data: Any) -> Any:
    try:
        return loads(data)
    except Exception:
        if bytes(data[:1]) == b"<":
            raise WrongSerializer("pickle", "xmlrpclib") from None
        raise


def is_plain(obj: Any, _scalars: frozenset[type] = _SCALARS) -> bool:
    """True if ``obj`` is a scalar or a tuple of scalars (no reducer can apply)."""
    t = type(obj)
    if t in _scalars:
        return True
    if t is tuple:
        for x in obj:
            if type(x) not in _scalars:
                return False
        return True
    return False


class Dumper:
    """A reusable pickler with polyproc's reducers; not thread-safe (one per connection)."""

    __slots__ = ("_buf", "_pickler", "_table")
    name = "pickle"
    load_request = staticmethod(_load_pickle)
    load_reply = staticmethod(_load_pickle)

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._pickler = pickle.Pickler(self._buf, _PROTOCOL)
        self._table = reduction._dispatch_table()
        self._pickler.dispatch_table = self._table

    def dumps(self, obj: Any) -> bytes:
        """Pickle ``obj`` (cloudpickle fallback for lambdas and closures, like polyproc's
        ``reduction.dumps``)."""
        table = reduction._dispatch_table()
        if table is not self._table:
            self._table = self._pickler.dispatch_table = table
        if reduction._by_value_needed():
            return bytes(reduction.dumps(obj))
        buf = self._buf
        pickler = self._pickler
        try:
            pickler.dump(obj)
        except _FALLBACK_ERRORS:
            self._reset()
            return bytes(reduction.dumps(obj))
        except BaseException:
            self._reset()
            raise
        data = buf.getvalue()
        self._reset()
        return data

    def _reset(self) -> None:
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        self._pickler.clear_memo()

    def request(self, ident: Any, methodname: str, args: tuple[Any, ...],
                kwds: dict[str, Any]) -> bytes:
        """Pickle a request."""
        if not kwds and is_plain(args):
            return _plain_dumps((ident, methodname, args, kwds), _PROTOCOL)
        return self.dumps((ident, methodname, args, kwds))

    def reply(self, kind: str, result: Any) -> bytes:
        """Pickle a reply."""
        if is_plain(result):
            return _plain_dumps((kind, result), _PROTOCOL)
        return self.dumps((kind, result))

    @staticmethod
    def decref(ids: list[Any]) -> bytes:
        """Pickle the one-way message returning references to ``ids``."""
        return _plain_dumps((DECREF, ids), _PROTOCOL)
