"""ctypes objects in shared memory, optionally wrapped with a lock.

The same API as ``multiprocessing.sharedctypes``: ``RawValue``/``RawArray`` give bare ctypes
objects living in shared memory (see ``polyproc._resources.heap``), ``Value``/``Array`` wrap
them with a lock (a recursive lock of the given context by default), ``synchronized`` wraps an
existing shared ctypes object, and ``copy`` makes a shared copy of one.

Typecodes are those of the ``array`` module (``'i'``, ``'d'``, ``'c'``, ...); a ctypes type can
be given instead. Shared objects travel to child processes only through inheritance: as
arguments of a ``Process`` (or in anything pickled while it starts). Pickling one at any other
time raises ``RuntimeError``, as in the stdlib.
"""

from __future__ import annotations

import ctypes
import weakref

from . import context, reduction
from ._resources import heap

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

    # A ctypes type (c_int, a Structure, an array type): ``*`` and ``from_buffer`` are methods
    # of metaclasses the stubs keep private (and change between versions): not checked further.
    _CType = Any

__all__ = [
    "RawValue", "RawArray", "Value", "Array", "copy", "synchronized",
    "SynchronizedBase", "Synchronized", "SynchronizedArray", "SynchronizedString",
]

typecode_to_type: dict[str, type] = {
    "c": ctypes.c_char, "u": ctypes.c_wchar,
    "b": ctypes.c_byte, "B": ctypes.c_ubyte,
    "h": ctypes.c_short, "H": ctypes.c_ushort,
    "i": ctypes.c_int, "I": ctypes.c_uint,
    "l": ctypes.c_long, "L": ctypes.c_ulong,
    "q": ctypes.c_longlong, "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float, "d": ctypes.c_double,
}


def _ctype(typecode_or_type: Any) -> _CType:
    if isinstance(typecode_or_type, str):
        try:
            return typecode_to_type[typecode_or_type]
        except KeyError:
            raise TypeError(
                f"bad typecode {typecode_or_type!r} (must be one of "
                f"{''.join(typecode_to_type)} or a ctypes type)"
            ) from None
    return typecode_or_type


# ---------------------------------------------------------------- raw objects


def _new_value(type_: _CType) -> Any:
    wrapper = heap.BufferWrapper(ctypes.sizeof(type_))
    return _rebuild_ctype(type_, wrapper, None)


def _zeroed(type_: _CType) -> Any:
    obj = _new_value(type_)
    ctypes.memset(ctypes.addressof(obj), 0, ctypes.sizeof(obj))  # blocks may be reused
    return obj


def RawValue(typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802 - the stdlib's name
    """A ctypes object of the given type in shared memory, built from ``args``; no lock."""
    obj = _zeroed(_ctype(typecode_or_type))
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
    """A ctypes array in shared memory: zeroed of the given length, or a copy of a sequence."""
    type_ = _ctype(typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _zeroed(type_ * size_or_initializer)
    init = size_or_initializer
    result = _zeroed(type_ * len(init))
    result.__init__(*init)
    return result


def _lock_for(lock: Any, ctx: Any) -> Any:
    if lock is True or lock is None:
        ctx = ctx or context._default_context.get_context()
        return ctx.RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


def Value(typecode_or_type: Any, *args: Any, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> Any:
    """A shared ctypes object, wrapped with ``lock`` (a new RLock if True; bare if False)."""
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock, ctx), ctx=ctx)


def Array(typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True,  # noqa: N802
          ctx: Any = None) -> Any:
    """A shared ctypes array, wrapped with ``lock`` (a new RLock if True; bare if False)."""
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock, ctx), ctx=ctx)


def copy(obj: Any) -> Any:
    """A new shared ctypes object holding a copy of ``obj``'s contents."""
    new_obj = _new_value(type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


# ---------------------------------------------------------------- pickling


def _reduce_ctype(obj: Any) -> Any:
    wrapper = obj.__dict__.get("_wrapper") if hasattr(obj, "__dict__") else None
    if wrapper is None:
        # A plain ctypes object of a type also used for shared ones: pickle it by value.
        return obj.__reduce_ex__(reduction.PROTOCOL)
    context.assert_spawning(obj)
    if isinstance(obj, ctypes.Array):
        return _rebuild_ctype, (obj._type_, wrapper, obj._length_)
    return _rebuild_ctype, (type(obj), wrapper, None)


def _rebuild_ctype(type_: _CType, wrapper: heap.BufferWrapper, length: int | None) -> Any:
    if length is not None:
        type_ = type_ * length
    reduction.register(type_, _reduce_ctype)
    obj = type_.from_buffer(wrapper.create_memoryview())
    obj._wrapper = wrapper  # keeps the block (and its arena's mapping) alive
    return obj


# ---------------------------------------------------------------- synchronized wrappers


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> SynchronizedBase:
    """Wrap the shared ctypes object ``obj`` so that its accessors take ``lock``.

    ``lock`` defaults to a new RLock of ``ctx`` (the default context if None). Scalars give a
    ``Synchronized``, ``c_char`` arrays a ``SynchronizedString``, other arrays a
    ``SynchronizedArray``, structures a class with one locked property per field.
    """
    if isinstance(obj, SynchronizedBase):
        raise TypeError("object already synchronized")
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock, ctx)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock, ctx)
        return SynchronizedArray(obj, lock, ctx)
    cls = type(obj)
    scls = _class_cache.get(cls)
    if scls is None:
        fields = {name: _locked_property(name) for name, *_ in getattr(cls, "_fields_", ())}
        scls = type("Synchronized" + cls.__name__, (SynchronizedBase,), fields)
        _class_cache[cls] = scls
    return scls(obj, lock, ctx)


_class_cache: weakref.WeakKeyDictionary[type, type] = weakref.WeakKeyDictionary()


def _locked_property(name: str) -> property:
    def fget(self: SynchronizedBase) -> Any:
        with self._lock:
            return getattr(self._obj, name)

    def fset(self: SynchronizedBase, value: Any) -> None:
        with self._lock:
            setattr(self._obj, name, value)

    return property(fget, fset, doc=f"``{name}`` of the wrapped object, read under the lock")


class SynchronizedBase:
    """A shared ctypes object with a lock; ``with obj:`` holds the lock."""

    def __init__(self, obj: Any, lock: Any = None, ctx: Any = None) -> None:
        self._obj = obj
        if lock:
            self._lock = lock
        else:
            ctx = ctx or context._default_context.get_context()
            self._lock = ctx.RLock()
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> Any:
        return self._lock.__enter__()

    def __exit__(self, *args: Any) -> Any:
        return self._lock.__exit__(*args)

    def __reduce__(self) -> tuple[Any, ...]:
        context.assert_spawning(self)
        return synchronized, (self._obj, self._lock)

    def get_obj(self) -> Any:
        """The wrapped ctypes object (accessing it directly takes no lock)."""
        return self._obj

    def get_lock(self) -> Any:
        """The lock used by this wrapper."""
        return self._lock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj}>"


class Synchronized(SynchronizedBase):
    """A synchronized scalar: ``.value`` reads and writes under the lock."""

    @property
    def value(self) -> Any:
        """The value, read under the lock."""
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, value: Any) -> None:
        with self._lock:
            self._obj.value = value


class SynchronizedArray(SynchronizedBase):
    """A synchronized array: ``len``, indexing and slicing take the lock."""

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i: Any) -> Any:
        with self._lock:
            return self._obj[i]

    def __setitem__(self, i: Any, value: Any) -> None:
        with self._lock:
            self._obj[i] = value

    def __getslice__(self, start: int, stop: int) -> Any:
        with self._lock:
            return self._obj[start:stop]

    def __setslice__(self, start: int, stop: int, values: Any) -> None:
        with self._lock:
            self._obj[start:stop] = values


class SynchronizedString(SynchronizedArray):
    """A synchronized ``c_char`` array: also ``.value`` (up to the first NUL) and ``.raw``."""

    @property
    def value(self) -> bytes:
        """The bytes up to the first NUL, read under the lock."""
        with self._lock:
            return self._obj.value

    @value.setter
    def value(self, value: bytes) -> None:
        with self._lock:
            self._obj.value = value

    @property
    def raw(self) -> bytes:
        """All the bytes of the array, read under the lock."""
        with self._lock:
            return self._obj.raw

    @raw.setter
    def raw(self, value: bytes) -> None:
        with self._lock:
            self._obj.raw = value
