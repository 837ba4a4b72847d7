"""Task functions and misbehaving items for tests/test_one_outcome.py (importable by workers)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

BAD = 100  # the index of the one bad item among N
N = 300


def _fail_load(*_: Any) -> Any:
    raise ValueError("this object refuses to be unpickled")


class LoadsBadly:
    """Pickles fine in the worker; rebuilding it in the parent raises."""

    def __reduce__(self) -> Any:
        return _fail_load, ()


class BadInitError(Exception):
    """Its ``__init__`` wants two arguments but passes one on: unpickling it fails."""

    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(a)


class NoPickleNoRepr:
    def __reduce__(self) -> Any:
        raise TypeError("this result cannot be pickled")

    def __repr__(self) -> str:
        raise RuntimeError("and its repr() raises")


class NoPickleNoStrError(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception cannot be pickled")

    def __str__(self) -> str:
        raise RuntimeError("and its str() raises")


class ExitsWhenPickled:
    def __reduce__(self) -> Any:
        raise SystemExit(7)


class KillsWorkerWhenPickled:
    def __reduce__(self) -> Any:
        os._exit(3)


def deep(n: int) -> list:
    x: list = []
    for _ in range(n):
        x = [x]
    return x


def _bad_outcome(kind: str) -> Any:
    if kind == "result_unloadable":
        return LoadsBadly()
    if kind == "exception_bad_init":
        raise BadInitError(1, 2)
    if kind == "result_unpicklable_bad_repr":
        return NoPickleNoRepr()
    if kind == "exception_unpicklable_bad_str":
        raise NoPickleNoStrError()
    if kind == "result_deeply_nested":
        return deep(100_000)
    if kind == "sys_exit":
        sys.exit(3)
    if kind == "result_exits_when_pickled":
        return ExitsWhenPickled()
    raise AssertionError(kind)


def task(kind: str, i: int) -> Any:
    if i == BAD:
        return _bad_outcome(kind)
    return i * i


def sq(x: int) -> int:
    return x * x


def lock_item() -> Any:
    return threading.Lock()


def kill_when_pickled(_: Any = None) -> Any:
    return KillsWorkerWhenPickled()
