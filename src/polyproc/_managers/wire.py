"""Pickling of manager requests and replies.

Messages are the stdlib's: a request is ``(ident, methodname, args, kwds)`` (``ident`` None
for the server's own functions) and a reply is ``(kind, result)`` with kind ``'#RETURN'``,
``'#ERROR'``, ``'#TRACEBACK'``, ``'#UNSERIALIZABLE'`` or ``'#PROXY'``.  polyproc adds one
message that gets no reply: ``('#DECREF', [ident, ...])``.

Pickling is the hot path of a proxy call, so a :class:`Dumper` reuses one pickler (with
polyproc's reducers) per connection instead of building one per message, and messages made
only of plain scalars skip even that.
"""

from __future__ import annotations

import io
import pickle

from .. import reduction

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Dumper", "loads", "DECREF", "RETURN", "ERROR", "TRACEBACK", "UNSERIALIZABLE",
           "PROXY"]

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
