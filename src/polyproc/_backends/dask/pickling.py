"""Pickling for Dask workers: fast pickle, cloudpickle where by-value is needed, references.

Used on both sides: the client pickles batches and functions with ``dumps``; Dask workers
unpickle with ``RefUnpickler`` and pickle their replies with ``dumps``. Imports nothing of
the client side (workers import this module).

What refers to the client's ``__main__`` (or to a module registered with
``cloudpickle.register_pickle_by_value``) travels by value, since workers cannot import it.
Objects scattered to the cluster are written as persistent references (their Dask key) and
restored on the worker from the futures the Dask task was given.
"""

from __future__ import annotations

import collections
import functools
import io
import pickle
import types
from typing import Any


def _by_value_modules() -> tuple[bytes, ...]:
    try:
        import cloudpickle

        return tuple(m.encode() for m in cloudpickle.list_registry_pickle_by_value())
    except Exception:
        return ()


def needs_cloudpickle(data: bytes) -> bool:
    """Whether ``data`` (a plain pickle) names something a worker cannot import."""
    return b"__main__" in data or any(m in data for m in _by_value_modules())


class _RefPickler(pickle.Pickler):
    """Pickles the objects in ``refs`` (by id) as references to scattered data."""

    def __init__(self, file: Any, refs: dict[int, str]) -> None:
        super().__init__(file, 5)
        self._refs = refs

    def persistent_id(self, obj: Any) -> str | None:
        return self._refs.get(id(obj))


@functools.lru_cache(maxsize=1)
def _cloud_picklers() -> tuple[type, type]:
    """cloudpickle's pickler, keeping code file names (so remote tracebacks show source
    lines where the file exists), and a variant that also writes scattered references."""
    import cloudpickle

    base = cloudpickle.Pickler
    table = getattr(base, "dispatch_table", None)
    code_reduce = table.get(types.CodeType) if table is not None else None

    class _CloudPickler(base):  # type: ignore[misc, valid-type]
        if code_reduce is not None:
            assert table is not None  # code_reduce came from it

            def _reduce_code(co: types.CodeType) -> Any:
                rv = code_reduce(co)
                args = tuple(co.co_filename if type(a) is str and a == "<dynamic-code>" else a
                             for a in rv[1])
                return (rv[0], args, *rv[2:])

            dispatch_table = collections.ChainMap({types.CodeType: _reduce_code}, table)

        def __init__(self, file: Any, refs: dict[int, str] | None = None) -> None:
            super().__init__(file, protocol=5)
            self._refs = refs

    class _CloudRefPickler(_CloudPickler):
        def persistent_id(self, obj: Any) -> str | None:
            return self._refs.get(id(obj))  # type: ignore[union-attr]

    return _CloudPickler, _CloudRefPickler


class RefUnpickler(pickle.Unpickler):
    """Unpickles what ``dumps(obj, refs)`` wrote, restoring references from ``refs``
    (Dask key -> the scattered object)."""

    def __init__(self, file: Any, refs: dict[str, Any]) -> None:
        super().__init__(file)
        self._refs = refs

    def persistent_load(self, pid: Any) -> Any:
        return self._refs[pid]


def pickling_error(obj: Any) -> BaseException | None:
    """None if ``obj`` pickles with ``dumps``, else the error (``Scheduler.unsendable``)."""
    try:
        dumps(obj)
    except Exception as e:
        return e
    return None


def dumps(obj: Any, refs: dict[int, str] | None = None) -> bytes:
    """Pickle for a Dask worker; the objects whose ids are in ``refs`` become references."""
    buf = io.BytesIO()
    try:
        if refs:
            _RefPickler(buf, refs).dump(obj)
            data: bytes | None = buf.getvalue()
        else:
            data = pickle.dumps(obj, 5)
    except (pickle.PicklingError, AttributeError, TypeError):
        data = None
    if data is None or needs_cloudpickle(data):
        buf = io.BytesIO()
        plain, with_refs = _cloud_picklers()
        (with_refs if refs else plain)(buf, refs).dump(obj)
        data = buf.getvalue()
    return data
