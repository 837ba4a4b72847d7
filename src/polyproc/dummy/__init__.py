"""polyproc's API backed by threads: the analogue of ``multiprocessing.dummy``.

``Process`` is a ``threading.Thread``; the synchronization primitives are ``threading``'s;
queues are ``queue.Queue``; ``Pipe`` is ``polyproc.dummy.connection.Pipe``; ``Pool`` is
``polyproc.pool.ThreadPool``. Nothing is pickled: objects are shared by reference.
"""

from __future__ import annotations

import array
import sys
import threading
import weakref
from queue import Queue
from threading import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore

from .connection import Pipe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import ModuleType
    from typing import Any

__all__ = [
    "Process", "current_process", "active_children", "freeze_support",
    "Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition",
    "Event", "Barrier", "Queue", "Manager", "Pipe", "Pool", "JoinableQueue",
]


def _children_of(thread: threading.Thread) -> weakref.WeakKeyDictionary[DummyProcess, None]:
    # Threads not started by DummyProcess (the main thread, plain threading.Threads) get their
    # children table on first use.
    children = getattr(thread, "_children", None)
    if children is None:
        children = thread._children = weakref.WeakKeyDictionary()  # type: ignore[attr-defined]
    return children


class DummyProcess(threading.Thread):
    """A thread with the ``Process`` API: ``start``, ``join``, ``is_alive``, ``exitcode``..."""

    def __init__(self, group: None = None, target: Callable[..., object] | None = None,
                 name: str | None = None, args: Iterable[Any] = (),
                 kwargs: Mapping[str, Any] | None = None, *, daemon: bool | None = None) -> None:
        super().__init__(group, target, name, args, kwargs, daemon=daemon)
        self._pid = None
        self._children: weakref.WeakKeyDictionary[DummyProcess, None] = (
            weakref.WeakKeyDictionary())
        self._start_called = False
        self._parent = current_process()

    def start(self) -> None:
        """Start the thread (only from the thread that created this object)."""
        if self._parent is not current_process():
            raise RuntimeError(
                f"Parent is {self._parent!r} but current_process is {current_process()!r}")
        self._start_called = True
        _children_of(self._parent)[self] = None
        super().start()

    @property
    def exitcode(self) -> int | None:
        """0 once the thread has finished (even if its target raised), else None."""
        if self._start_called and not self.is_alive():
            return 0
        return None


Process = DummyProcess
current_process = threading.current_thread


def active_children() -> list[DummyProcess]:
    """The still-running DummyProcesses started by the current thread."""
    children = _children_of(current_process())
    for p in list(children):
        if not p.is_alive():
            children.pop(p, None)
    return list(children)


def freeze_support() -> None:
    """Does nothing (threads need no frozen-executable support)."""


class Namespace:
    """A plain attribute container, shown with its public attributes sorted by name."""

    def __init__(self, /, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def __repr__(self) -> str:
        items = sorted(f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({', '.join(items)})"


dict = dict  # noqa: A001 - Manager().dict() is the builtin
list = list  # noqa: A001


def Array(typecode: str, sequence: Iterable[Any], lock: Any = True) -> array.array[Any]:  # noqa: N802
    """An ``array.array`` (threads share memory; ``lock`` is ignored)."""
    return array.array(typecode, sequence)


class Value:
    """A boxed value with a ``value`` attribute (``lock`` is ignored)."""

    def __init__(self, typecode: str, value: Any, lock: Any = True) -> None:
        self._typecode = typecode
        self._value = value

    @property
    def value(self) -> Any:
        """The boxed value."""
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"<{type(self).__name__}({self._typecode!r}, {self._value!r})>"


def Manager() -> ModuleType:  # noqa: N802
    """This module, which has the factories a manager has (``dict``, ``Lock``, ``Queue``...)."""
    return sys.modules[__name__]


def shutdown() -> None:
    """Does nothing (``Manager().shutdown()`` for a module-level manager)."""


def Pool(processes: int | None = None, initializer: Callable[..., object] | None = None,  # noqa: N802
         initargs: Iterable[Any] = ()) -> Any:
    """A pool of worker threads: ``polyproc.pool.ThreadPool(processes, initializer, initargs)``."""
    try:
        from ..pool import ThreadPool
    except ModuleNotFoundError as e:
        if e.name != "polyproc.pool":
            raise
        raise NotImplementedError(
            "polyproc.dummy.Pool needs polyproc.pool.ThreadPool, which arrives with the pool "
            "milestone (polyproc.pool is not available yet)"
        ) from e
    return ThreadPool(processes, initializer, initargs)


JoinableQueue = Queue
