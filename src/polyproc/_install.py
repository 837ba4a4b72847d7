"""Whole-program mode: the stdlib's ``multiprocessing`` names resolve to polyproc.

``install()`` puts polyproc's modules into ``sys.modules`` under the stdlib's names
(``multiprocessing``, ``multiprocessing.pool``, ..., ``concurrent.futures.process``), so the
libraries a program uses (PyTorch's DataLoader, tqdm, Dask, joblib's ``multiprocessing``
backend) run on polyproc without a change. It marks the environment (``POLYPROC_INSTALL``)
so that every child polyproc starts, under every start method, installs it before anything
else, and so do their children.

Stdlib submodules that are CPython internals with no polyproc counterpart
(``multiprocessing.heap``, ``resource_sharer``, ``popen_fork``, ...) import, so a library
that imports one at module level still loads; using a name from one raises
``NotImplementedError`` naming it and saying what to do.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from typing import Any

ENV = "POLYPROC_INSTALL"

#: stdlib ``multiprocessing`` submodule -> the polyproc module that stands for it.
ALIASES = {
    "multiprocessing": "polyproc",
    "multiprocessing.connection": "polyproc.connection",
    "multiprocessing.context": "polyproc.context",
    "multiprocessing.dummy": "polyproc.dummy",
    "multiprocessing.dummy.connection": "polyproc.dummy.connection",
    "multiprocessing.managers": "polyproc.managers",
    "multiprocessing.pool": "polyproc.pool",
    "multiprocessing.process": "polyproc.process",
    "multiprocessing.queues": "polyproc.queues",
    "multiprocessing.reduction": "polyproc.reduction",
    "multiprocessing.shared_memory": "polyproc.shared_memory",
    "multiprocessing.sharedctypes": "polyproc.sharedctypes",
    "multiprocessing.synchronize": "polyproc.synchronize",
    "multiprocessing.util": "polyproc.util",
}

#: CPython-internal submodules: importable, every name a placeholder (see ``_Internal``).
INTERNAL = ("heap", "resource_tracker", "resource_sharer", "spawn", "forkserver",
            "popen_fork", "popen_forkserver", "popen_spawn_posix", "popen_spawn_win32")

_installed = False


def installed() -> bool:
    """Whether the stdlib's names resolve to polyproc in this process."""
    return _installed


def install(*, futures: bool = True) -> None:
    """Make ``multiprocessing`` (and, with ``futures``, the process pool of
    ``concurrent.futures``) resolve to polyproc here and in every child polyproc starts.

    Call it first, before anything imports ``multiprocessing`` (``python -m polyproc run``
    does). Modules that imported the stdlib's before keep what they got: a warning names
    them. Calling it again does nothing.
    """
    global _installed
    if _installed:
        return
    _warn_if_stdlib_loaded()
    for stdlib_name, ours in ALIASES.items():
        module = importlib.import_module(ours)
        sys.modules[stdlib_name] = module
        parent, _, child = stdlib_name.rpartition(".")
        if parent and child and not hasattr(sys.modules.get(parent), child):
            setattr(sys.modules[parent], child, module)
    for name in INTERNAL:
        full = f"multiprocessing.{name}"
        module = _internal_module(full)
        sys.modules[full] = module
    if futures:
        _install_futures()
    os.environ[ENV] = "1" if futures else "mp"
    _installed = True


def install_from_env() -> None:
    """In a child: install if the parent did (the first thing a spawned child runs)."""
    flag = os.environ.get(ENV)
    if flag and not _installed:
        install(futures=flag != "mp")


def _install_futures() -> None:
    import concurrent.futures

    from . import futures

    module = types.ModuleType("concurrent.futures.process", futures.__doc__)
    module.__dict__.update({name: getattr(futures, name) for name in futures.__all__})
    module.ProcessPoolExecutor = futures.ProcessPoolExecutor  # type: ignore[attr-defined]
    module.BrokenProcessPool = futures.BrokenProcessPool  # type: ignore[attr-defined]
    module.__getattr__ = _internal_getattr("concurrent.futures.process")  # type: ignore[method-assign]
    module.__polyproc__ = True  # type: ignore[attr-defined]
    sys.modules["concurrent.futures.process"] = module
    concurrent.futures.process = module
    # concurrent.futures hands out ProcessPoolExecutor lazily, caching it once asked for.
    concurrent.futures.ProcessPoolExecutor = futures.ProcessPoolExecutor  # type: ignore[misc, assignment]


def _warn_if_stdlib_loaded() -> None:
    loaded = sorted(name for name, module in list(sys.modules.items())
                    if (name == "multiprocessing" or name.startswith("multiprocessing."))
                    and module is not None and not getattr(module, "__polyproc__", False)
                    and not getattr(module, "__name__", "").startswith("polyproc"))
    if loaded:
        warnings.warn(
            f"polyproc.install() ran after the stdlib's {', '.join(loaded[:5])} was imported: "
            "modules that imported it before keep the stdlib's objects. Call "
            "polyproc.install() first, or run the program with `python -m polyproc run`.",
            RuntimeWarning, stacklevel=3)


def _internal_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"Stands for CPython's internal {name}, which polyproc "
                                    "does not provide (see polyproc._install).")
    module.__getattr__ = _internal_getattr(name)  # type: ignore[method-assign]
    module.__polyproc__ = True  # type: ignore[attr-defined]
    return module


def _internal_getattr(module: str) -> Any:
    def __getattr__(attr: str) -> Any:  # noqa: N807 - a module's __getattr__
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _placeholder(f"{module}.{attr}")

    return __getattr__


def _placeholder(name: str) -> type:
    """A class standing for a CPython internal: importing it works, using it raises."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{name} is a CPython internal of the stdlib's multiprocessing that polyproc "
            "does not provide. Use the documented API instead, or run this code without "
            "polyproc's whole-program mode (python -m polyproc run / polyproc.install()).")

    return type(name.rpartition(".")[2], (), {
        "__new__": refuse, "__module__": name.rpartition(".")[0], "__polyproc_internal__": name,
    })
