"""Cooperation with the stdlib's ``multiprocessing`` when the program loaded it itself.

polyproc never imports the stdlib package. But a program (or a library in it) may have: its
locks, queues and connections must then cross into polyproc's children as they would into the
stdlib's own, and a stdlib queue used in a polyproc child must deliver its messages before the
child exits. Each function here looks the stdlib's modules up in ``sys.modules`` and does
nothing when they are not loaded (or when whole-program mode put polyproc's in their place).
"""

from __future__ import annotations

import sys
from typing import Any


def stdlib_module(name: str) -> Any:
    """The stdlib's module ``name`` if this process loaded it, else None."""
    module = sys.modules.get(name)
    if module is None or getattr(module, "__name__", None) != name or \
            getattr(module, "__polyproc__", False):
        return None  # not loaded, or polyproc's own under the stdlib's name
    return module


def set_spawning_popen(popen: Any) -> None:
    """While polyproc pickles a child's process object, the stdlib's objects may be pickled
    too (its locks and queues refuse unless their own context says a child is spawning)."""
    context = stdlib_module("multiprocessing.context")
    if context is not None:
        context.set_spawning_popen(popen)


def stdlib_authkey() -> bytes | None:
    """This process's authkey in the stdlib's eyes, if the program loaded the stdlib."""
    process = stdlib_module("multiprocessing.process")
    if process is None:
        return None
    try:
        return bytes(process.current_process().authkey)
    except Exception:
        return None


_parent_stdlib_authkey: bytes | None = None


def adopt_parent_authkey(key: bytes | None) -> None:
    """In a spawn/forkserver child: the parent's stdlib authkey, for ``use_parent_authkey``."""
    global _parent_stdlib_authkey
    _parent_stdlib_authkey = key
    use_parent_authkey()


def use_parent_authkey() -> None:
    """Give the stdlib's current process the parent's stdlib authkey, as the stdlib's own
    children have: the stdlib's fd passing (``reduction.DupFd``, e.g. PyTorch tensors sent
    from a DataLoader worker) authenticates the parent with it. Called once the child has
    imported what its process object needs; a no-op when the stdlib is not loaded."""
    if _parent_stdlib_authkey is None:
        return
    process = stdlib_module("multiprocessing.process")
    if process is not None:
        try:
            process.current_process().authkey = _parent_stdlib_authkey
        except Exception:
            pass


_as_stdlib: dict[type, type] = {}


def adopt_stdlib_context_base(contexts: Any) -> bool:
    """Make polyproc's contexts instances of the stdlib's ``BaseContext`` too, once the
    program has loaded it: libraries check ``isinstance(ctx, multiprocessing.context.
    BaseContext)`` before they accept a context (PyTorch's DataLoader does). Each context's
    class becomes a subclass of its own class and the stdlib's (polyproc's methods first:
    polyproc defines every public name, so none of the stdlib's code runs). True once done
    (False: the stdlib is not loaded, or it is polyproc's own under its name)."""
    context = stdlib_module("multiprocessing.context")
    base = getattr(context, "BaseContext", None)
    if base is None:
        return False
    for ctx in contexts:
        cls = type(ctx)
        if isinstance(ctx, base):
            continue
        combined = _as_stdlib.get(cls)
        if combined is None:
            combined = _as_stdlib[cls] = type(cls.__name__, (cls, base), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__})
        try:
            ctx.__class__ = combined
        except TypeError:
            pass  # a context class with another layout: left as it is
    return True


def extra_reducers() -> dict[type, Any]:
    """The reducers the stdlib registered (its connections, sockets, ...), if it is loaded."""
    reduction = stdlib_module("multiprocessing.reduction")
    if reduction is None:
        return {}
    return getattr(reduction.ForkingPickler, "_extra_reducers", {})


def after_fork_in_child() -> None:
    """In a polyproc child made by fork: what the stdlib does first in its own forked
    children (its locks and queues reset their per-process state; the parent's children are
    not this process's)."""
    process = stdlib_module("multiprocessing.process")
    if process is not None:
        process._children = set()
    util = stdlib_module("multiprocessing.util")
    if util is not None:
        util._run_after_forkers()


def exit_in_child() -> None:
    """At a polyproc child's exit: the stdlib's exit work too (its queues flush their
    buffered messages to the pipe, its finalizers run)."""
    util = stdlib_module("multiprocessing.util")
    if util is not None:
        util._exit_function()


#: The stdlib's pools, and what to use instead, by the module that builds their queues.
_POOLS = {
    "concurrent.futures.process": "concurrent.futures.ProcessPoolExecutor",
    "multiprocessing.pool": "multiprocessing.pool.Pool",
}


def refuse_stdlib_pool(frame: Any) -> None:
    """A polyproc context handed to the stdlib's executor or Pool: refuse at construction.

    They reach into their queues' private pipes (``_reader``, ``_writer``), which polyproc's
    shared-memory queues do not have; failing later, in their threads, would hang the caller.
    """
    name = frame.f_globals.get("__name__")
    pool = _POOLS.get(name)
    if pool is None or stdlib_module(name) is None:
        return
    ours = ("polyproc.futures.ProcessPoolExecutor(max_workers, mp_context=ctx)"
            if "futures" in name else "polyproc.Pool(processes, context=ctx) or ctx.Pool()")
    raise TypeError(
        f"the stdlib's {pool} cannot run on a polyproc context: it reaches into the private "
        f"pipes of the stdlib's own queues. Use {ours}, or run the whole program on polyproc "
        "(python -m polyproc run script.py, or polyproc.install() first thing), which makes "
        f"{pool} polyproc's.")
