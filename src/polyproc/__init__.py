"""polyproc: process-based parallelism with the ``multiprocessing`` API.

``import polyproc as multiprocessing`` and a program runs unchanged. The module-level names
below are bound to the default context (see ``polyproc.context``).
"""

from __future__ import annotations

import sys as _sys

from . import context as _context
from .context import AuthenticationError, BufferTooShort, ProcessError, TimeoutError
from .process import active_children, current_process, parent_process
from .util import SUBDEBUG, SUBWARNING

__version__ = "0.1.0"

_default = _context._default_context

# Spawn and forkserver children import the main module as ``__mp_main__``; objects of its
# classes they send back are pickled under that name, which must resolve here too.
if "__main__" in _sys.modules:
    _sys.modules.setdefault("__mp_main__", _sys.modules["__main__"])

Process = _context.Process
Pipe = _default.Pipe
Lock = _default.Lock
RLock = _default.RLock
Condition = _default.Condition
Semaphore = _default.Semaphore
BoundedSemaphore = _default.BoundedSemaphore
Event = _default.Event
Barrier = _default.Barrier
Queue = _default.Queue
JoinableQueue = _default.JoinableQueue
SimpleQueue = _default.SimpleQueue
RawValue = _default.RawValue
RawArray = _default.RawArray
Value = _default.Value
Array = _default.Array
Pool = _default.Pool
Manager = _default.Manager
cpu_count = _default.cpu_count
freeze_support = _default.freeze_support
get_logger = _default.get_logger
log_to_stderr = _default.log_to_stderr
allow_connection_pickling = _default.allow_connection_pickling
set_executable = _default.set_executable
set_forkserver_preload = _default.set_forkserver_preload
get_context = _default.get_context
get_start_method = _default.get_start_method
set_start_method = _default.set_start_method
get_all_start_methods = _default.get_all_start_methods
reducer = _default.reducer

_LAZY = {
    "ProcessPoolExecutor": ("polyproc.futures", "ProcessPoolExecutor"),
    "ThreadPool": ("polyproc.pool", "ThreadPool"),
    "WorkerLostError": ("polyproc._engine.broken", "WorkerLostError"),
    "TaskTimeoutError": ("polyproc._engine.errors", "TaskTimeoutError"),
    "BrokenProcessPool": ("polyproc._engine.broken", "BrokenProcessPool"),
    "ResultUnpicklingError": ("polyproc._engine.broken", "ResultUnpicklingError"),
    "UnpicklableError": ("polyproc._engine.errors", "UnpicklableError"),
    "RemoteTraceback": ("polyproc._engine.errors", "RemoteTraceback"),
    "install": ("polyproc._install", "install"),
}


def __getattr__(name: str) -> object:
    # Imported on first use: keeps `import polyproc` (and every child's start) light.
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'polyproc' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


__all__ = [
    "Array", "AuthenticationError", "Barrier", "BoundedSemaphore", "BufferTooShort",
    "Condition", "Event", "JoinableQueue", "Lock", "Manager", "Pipe", "Pool", "Process",
    "ProcessError", "Queue", "RLock", "RawArray", "RawValue", "SUBDEBUG", "SUBWARNING",
    "Semaphore", "SimpleQueue", "TimeoutError", "Value", "active_children",
    "allow_connection_pickling", "cpu_count", "current_process", "freeze_support",
    "get_all_start_methods", "get_context", "get_logger", "get_start_method", "log_to_stderr",
    "parent_process", "reducer", "set_executable", "set_forkserver_preload", "set_start_method",
    "ProcessPoolExecutor", "ThreadPool", "WorkerLostError", "TaskTimeoutError", "BrokenProcessPool",
    "ResultUnpicklingError", "UnpicklableError", "RemoteTraceback", "install",
]
