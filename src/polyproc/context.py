"""Contexts: one object per start method that makes every polyproc object.

``polyproc.get_context('spawn').Queue()`` makes a queue whose processes start with spawn; the
module-level names of ``polyproc`` are the bound methods of the default context.
"""

from __future__ import annotations

import os
import sys

from . import _stdlib_compat, process, reduction
from ._exceptions import AuthenticationError, BufferTooShort, ProcessError, TimeoutError
from ._spawning import assert_spawning, get_spawning_popen, set_spawning_popen

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

__all__ = [
    "ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError",
    "BaseContext", "DefaultContext", "ForkContext", "SpawnContext", "ForkServerContext",
    "ForkProcess", "SpawnProcess", "ForkServerProcess", "Process",
    "get_spawning_popen", "set_spawning_popen", "assert_spawning",
]


_ALL_METHODS = ("fork", "spawn", "forkserver")


class BaseContext:
    """Factory of processes and shared objects for one start method."""

    ProcessError = ProcessError
    BufferTooShort = BufferTooShort
    TimeoutError = TimeoutError
    AuthenticationError = AuthenticationError

    current_process = staticmethod(process.current_process)
    parent_process = staticmethod(process.parent_process)
    active_children = staticmethod(process.active_children)

    _name: str | None = None
    #: The context's Process class (set by each concrete context).
    Process: type[process.BaseProcess]

    def cpu_count(self) -> int:
        """Number of CPUs in the system (NotImplementedError if unknown, like the stdlib)."""
        num = os.cpu_count()
        if num is None:
            raise NotImplementedError("cannot determine number of cpus")
        return num

    # -- connections
    def Pipe(self, duplex: bool = True) -> tuple[Any, Any]:
        """A pair of connected Connection objects."""
        from .connection import Pipe

        return Pipe(duplex)

    # -- synchronization (polyproc.synchronize)
    def Lock(self) -> Any:
        from .synchronize import Lock

        return Lock(ctx=self.get_context())

    def RLock(self) -> Any:
        from .synchronize import RLock

        return RLock(ctx=self.get_context())

    def Condition(self, lock: Any = None) -> Any:
        from .synchronize import Condition

        return Condition(lock, ctx=self.get_context())

    def Semaphore(self, value: int = 1) -> Any:
        from .synchronize import Semaphore

        return Semaphore(value, ctx=self.get_context())

    def BoundedSemaphore(self, value: int = 1) -> Any:
        from .synchronize import BoundedSemaphore

        return BoundedSemaphore(value, ctx=self.get_context())

    def Event(self) -> Any:
        from .synchronize import Event

        return Event(ctx=self.get_context())

    def Barrier(self, parties: int, action: Callable[[], Any] | None = None,
                timeout: float | None = None) -> Any:
        from .synchronize import Barrier

        return Barrier(parties, action, timeout, ctx=self.get_context())

    # -- queues (polyproc.queues)
    def Queue(self, maxsize: int = 0) -> Any:
        from .queues import Queue

        return Queue(maxsize, ctx=self.get_context())

    def JoinableQueue(self, maxsize: int = 0) -> Any:
        from .queues import JoinableQueue

        return JoinableQueue(maxsize, ctx=self.get_context())

    def SimpleQueue(self) -> Any:
        from . import _stdlib_compat
        from .queues import SimpleQueue

        _stdlib_compat.refuse_stdlib_pool(sys._getframe(1))
        return SimpleQueue(ctx=self.get_context())

    # -- shared memory (polyproc.sharedctypes)
    def RawValue(self, typecode_or_type: Any, *args: Any) -> Any:
        from .sharedctypes import RawValue

        return RawValue(typecode_or_type, *args)

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> Any:
        from .sharedctypes import RawArray

        return RawArray(typecode_or_type, size_or_initializer)

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
        from .sharedctypes import Value

        return Value(typecode_or_type, *args, lock=lock, ctx=self.get_context())

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:
        from .sharedctypes import Array

        return Array(typecode_or_type, size_or_initializer, lock=lock, ctx=self.get_context())

    # -- pools and managers
    def Pool(self, processes: int | None = None, initializer: Callable[..., Any] | None = None,
             initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
             **options: Any) -> Any:
        """A process pool (see ``polyproc.pool.Pool``)."""
        from .pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild,
                    context=self.get_context(), **options)

    def ProcessPoolExecutor(self, max_workers: int | None = None, **options: Any) -> Any:
        """A ``concurrent.futures`` executor on this context (see ``polyproc.futures``)."""
        from .futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers, mp_context=self.get_context(), **options)

    def Manager(self) -> Any:
        """A started SyncManager (see ``polyproc.managers``)."""
        from .managers import SyncManager

        m = SyncManager(ctx=self.get_context())
        m.start()
        return m

    # -- misc
    def freeze_support(self) -> None:
        """Support for frozen executables: run the child's work if this is a spawned child."""
        if getattr(sys, "frozen", False):
            from ._spawn.spawn import freeze_support

            freeze_support()

    def get_logger(self) -> Any:
        from .util import get_logger

        return get_logger()

    def log_to_stderr(self, level: Any = None) -> Any:
        from .util import log_to_stderr

        return log_to_stderr(level)

    def allow_connection_pickling(self) -> None:
        """Connections and sockets are always picklable in polyproc; kept for compatibility."""
        from . import connection  # noqa: F401 - registers the reducers

    def set_executable(self, executable: str) -> None:
        """Set the interpreter used to spawn children (spawn and forkserver)."""
        from ._spawn import spawn

        spawn.set_executable(executable)

    def set_forkserver_preload(self, module_names: Sequence[str]) -> None:
        """Modules the fork server imports once, so forked children start with them loaded."""
        from ._spawn import forkserver

        forkserver.set_forkserver_preload(module_names)

    def get_context(self, method: str | None = None, **options: Any) -> BaseContext:
        """Return the context for ``method`` (this context if None).

        ``get_context('dask', address=None, **options)`` returns a new context whose pools run
        on a Dask cluster (needs ``polyproc[dask]``; see docs/dask.md).
        """
        if method == "dask":
            from ._backends.dask import DaskContext

            return DaskContext(**options)
        if options:
            raise TypeError(f"get_context({method!r}) takes no options")
        if method is None:
            return self
        try:
            ctx = _concrete_contexts[method]
        except KeyError:
            raise ValueError(f"cannot find context for {method!r}") from None
        ctx._check_available()
        _adopt_stdlib_base()
        return ctx

    def get_start_method(self, allow_none: bool = False) -> str:
        return self._name  # type: ignore[return-value]

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        raise ValueError("cannot set start method of concrete context")

    @property
    def reducer(self) -> Any:
        """The reduction module used to pickle objects sent to other processes."""
        return globals().get("reduction")

    @reducer.setter
    def reducer(self, reduction_module: Any) -> None:
        globals()["reduction"] = reduction_module

    def get_all_start_methods(self) -> list[str]:
        """Start methods available here, the default first."""
        default = _default_method()
        return [default] + [m for m in _ALL_METHODS if m != default]

    def _check_available(self) -> None:
        pass


# ---------------------------------------------------------------- processes


class ForkProcess(process.BaseProcess):
    """A Process started with ``os.fork``."""

    _start_method = "fork"

    @staticmethod
    def _Popen(process_obj: process.BaseProcess) -> Any:
        from ._spawn.fork import Popen

        return Popen(process_obj)


class SpawnProcess(process.BaseProcess):
    """A Process started as a fresh interpreter."""

    _start_method = "spawn"

    @staticmethod
    def _Popen(process_obj: process.BaseProcess) -> Any:
        from ._spawn.spawn import Popen

        return Popen(process_obj)

    @staticmethod
    def _after_fork() -> None:
        pass


class ForkServerProcess(process.BaseProcess):
    """A Process forked from the fork server."""

    _start_method = "forkserver"

    @staticmethod
    def _Popen(process_obj: process.BaseProcess) -> Any:
        from ._spawn.forkserver import Popen

        return Popen(process_obj)


class Process(process.BaseProcess):
    """A Process started with the default context's current start method."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj: process.BaseProcess) -> Any:
        return _default_context.get_context().Process._Popen(process_obj)

    @staticmethod
    def _after_fork() -> None:
        return _default_context.get_context().Process._after_fork()


def _fork_after_fork() -> None:
    from .util import _run_after_forkers

    _run_after_forkers()


ForkProcess._after_fork = staticmethod(_fork_after_fork)  # type: ignore[method-assign]


class ForkContext(BaseContext):
    _name = "fork"
    Process = ForkProcess


class SpawnContext(BaseContext):
    _name = "spawn"
    Process = SpawnProcess


class ForkServerContext(BaseContext):
    _name = "forkserver"
    Process = ForkServerProcess

    def _check_available(self) -> None:
        if not reduction.HAVE_SEND_HANDLE:
            raise ValueError("forkserver start method not available")


_concrete_contexts: dict[str, BaseContext] = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}


def _default_method() -> str:
    """The default start method: the same as the running Python's stdlib on this platform.

    On Linux the stdlib used fork up to 3.13 and forkserver from 3.14 (fork is unsafe with
    threads). polyproc follows the running interpreter so that a program that changes only
    its import line keeps the semantics it was written for. See docs/start-methods.md.
    """
    if sys.platform == "darwin":
        return "spawn"
    if sys.version_info >= (3, 14):
        return "forkserver"
    return "fork"


class DefaultContext(BaseContext):
    """The context behind the module-level functions; its start method can be set once."""

    Process = Process

    def __init__(self, context: BaseContext) -> None:
        self._default_context = context
        self._actual_context: BaseContext | None = None

    def get_context(self, method: str | None = None, **options: Any) -> BaseContext:
        if method is None and not options:
            if self._actual_context is None:
                self._actual_context = self._default_context
            _adopt_stdlib_base()
            return self._actual_context
        return super().get_context(method, **options)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Set the default start method; a second call needs ``force=True``."""
        if self._actual_context is not None and not force:
            raise RuntimeError("context has already been set")
        if method is None and force:
            self._actual_context = None
            return
        self._actual_context = self.get_context(method)

    def get_start_method(self, allow_none: bool = False) -> str:
        """The default start method (fixing it if unset, unless ``allow_none``)."""
        if self._actual_context is None:
            if allow_none:
                return None  # type: ignore[return-value]
            self._actual_context = self._default_context
        return self._actual_context._name  # type: ignore[return-value]


_default_context = DefaultContext(_concrete_contexts[_default_method()])


def _adopt_stdlib_base() -> None:
    """Once the program has loaded the stdlib's ``multiprocessing``, polyproc's contexts are
    instances of its ``BaseContext`` too (libraries check it); see ``_stdlib_compat``."""
    global _adopted
    if not _adopted and "multiprocessing.context" in sys.modules:
        _adopted = _stdlib_compat.adopt_stdlib_context_base((*_concrete_contexts.values(),
                                                             _default_context))


_adopted = False


_adopt_stdlib_base()


def _force_start_method(method: str) -> None:
    """In a child: make the default context use the method that started this process."""
    _default_context._actual_context = _concrete_contexts[method]


#: The stdlib's words (code may match them) for an object of a fork context on its way to a
#: spawn or forkserver child.
FORK_CONTEXT_SHARED = (
    "A SemLock created in a fork context is being shared with a process in a spawn context. "
    "This is not supported. Please use the same context to create multiprocessing objects "
    "and Process."
)


def is_fork_context(ctx: Any) -> bool:
    """Whether objects made for ``ctx`` (None: the default context) belong to fork children
    only, as the stdlib's do: they may be inherited by forked children, never sent to spawn or
    forkserver ones."""
    if ctx is None:
        ctx = _default_context.get_context()
    return ctx.get_start_method() == "fork"
