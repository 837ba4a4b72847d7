"""Make the stdlib's ``multiprocessing`` names resolve to polyproc in this process.

Used by ``python -m polyproc.testing.cpython`` (CPython's own test suites against polyproc).
The runner copies this file, standalone, into the site-packages of a throw-away virtual
environment as ``_polyproc_cpython_hook`` and loads it from a ``.pth`` file there, so it runs
at start-up in every interpreter started with that environment's ``python``: the test
process, spawn and forkserver children, the fork server, pool and manager processes, and
the suites' own ``python -E`` / ``python -I`` subprocesses (site-packages ``.pth`` files are
read even then). For ``python -S`` (no site at all) a ``multiprocessing`` package in the
test's working directory loads this file by path (see ``_cpython_env``).

It must not import polyproc (or anything heavy) at module level: it only installs an import
hook; polyproc is imported when something first imports ``multiprocessing``.

Aliases (``install()``):

- ``multiprocessing`` -> ``polyproc``; ``multiprocessing.X`` -> ``polyproc.X`` for each
  public polyproc module (``pool``, ``queues``, ``connection``, ``managers``, ...).
- stdlib submodules polyproc does not have (``heap``, ``resource_tracker``, ``spawn``,
  ``popen_*``, ...; CPython internals): a stub module whose attributes are placeholders that
  raise ``CPythonInternalError`` naming the internal when used (so a suite importing them at
  module level still loads, and only the tests that use them fail, saying why).
- ``concurrent.futures.process`` -> a module whose public names are ``polyproc.futures``'s;
  its private names are such placeholders, except ``_check_system_limits`` (the suites' test
  harness calls it in every ``setUp``): polyproc has no system-limit check, so it returns.
- ``test.test_multiprocessing_{fork,spawn,forkserver}`` where the interpreter does not ship
  them (trimmed installs): generated like CPython's own 3.11 files, from
  ``test._test_multiprocessing.install_tests_in_module_dict``. The fork server preloads
  ``test.test_multiprocessing_forkserver``, as under CPython.

Nothing ever falls back to the stdlib: once installed, no ``multiprocessing`` name can load
the stdlib package. ``verify()`` says what is wrong in this process; at exit, a process that
loaded stdlib multiprocessing anyway appends a line to ``$POLYPROC_CPYTHON_ALARM``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import types
import weakref
from collections.abc import Callable

TYPE_CHECKING = False  # the hook runs in every test process: no typing import at run time
if TYPE_CHECKING:
    from typing import NoReturn

MARK = "[cpython-internal]"
ENV_SRC = "POLYPROC_CPYTHON_SRC"
ENV_ALARM = "POLYPROC_CPYTHON_ALARM"

# Stdlib multiprocessing submodules that polyproc does not provide: CPython internals.
ABSENT = frozenset({
    "heap", "resource_tracker", "resource_sharer", "spawn", "forkserver", "popen_fork",
    "popen_forkserver", "popen_spawn_posix", "popen_spawn_win32",
})
GENERATED = {f"test.test_multiprocessing_{m}": m for m in ("fork", "spawn", "forkserver")}
_GENERATED_SOURCE = (
    "import test._test_multiprocessing as _suite\n"
    "_suite.install_tests_in_module_dict(globals(), {method!r})\n"
)

_STDLIB_DIR = os.path.dirname(os.__file__)
STDLIB_FILES = (
    os.path.join(_STDLIB_DIR, "multiprocessing") + os.sep,
    os.path.join(_STDLIB_DIR, "concurrent", "futures", "process.py"),
)


class CPythonInternalError(AttributeError):
    """A test used a CPython-internal multiprocessing name that polyproc does not provide."""


class Placeholder:
    """Stands for a CPython internal polyproc lacks; any use raises CPythonInternalError."""

    __slots__ = ("_pp_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_pp_name", name)

    def _pp_fail(self, *args: object, **kwargs: object) -> NoReturn:
        raise CPythonInternalError(
            f"{self._pp_name} is a CPython internal that polyproc does not provide {MARK}")

    def __getattr__(self, attr: str) -> object:
        self._pp_fail()

    def __mro_entries__(self, bases: tuple) -> tuple:
        self._pp_fail()
        return ()

    def __repr__(self) -> str:
        return f"<absent CPython internal {self._pp_name}>"

    __call__ = __getitem__ = __setitem__ = __delitem__ = __iter__ = __len__ = _pp_fail
    __contains__ = __enter__ = __bool__ = __setattr__ = _pp_fail


class AbsentModule(types.ModuleType):
    """A stdlib multiprocessing submodule polyproc does not have: every name a Placeholder."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return Placeholder(f"{self.__name__}.{name}")


# Names the suites need that polyproc's modules lack, where lacking them would stop the whole
# suite rather than one test: read while the suite is IMPORTED (decorators), or by its test
# HARNESS (module and class fixtures, every test's setUp). Each is defined only if polyproc
# still lacks it, only in these test processes; the report lists each as a polyproc gap.
GAPS: dict[str, dict[str, tuple[Callable[[], object], str]]] = {
    "util": {
        "abstract_sockets_supported": (lambda: sys.platform == "linux",
                                       "read at import by a skipUnless decorator"),
        "_cleanup_tests": (lambda: _no_cleanup,
                           "the suites' module clean-up (a CPython internal): a no-op; the "
                           "runner kills each class's process group instead"),
    },
    "process": {
        "_dangling": (lambda: weakref.WeakSet(),
                      "the suites' fixtures' dangling-process bookkeeping (a CPython "
                      "internal): an empty set, so dangling processes are not warned about"),
    },
}
GAPS_FILLED: dict[str, str] = {}


def _no_cleanup() -> None:
    """Harness glue for multiprocessing.util._cleanup_tests."""


def _fill_gaps(stdlib_name: str, module: types.ModuleType) -> None:
    for attr, (make, why) in GAPS.get(stdlib_name.partition(".")[2], {}).items():
        if not hasattr(module, attr):
            setattr(module, attr, make())
            GAPS_FILLED[f"{stdlib_name}.{attr}"] = why


def _check_system_limits() -> None:
    """Harness glue: CPython's check for POSIX semaphore limits; polyproc needs none."""


class FuturesProcessModule(types.ModuleType):
    """``concurrent.futures.process`` standing for ``polyproc.futures``."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if name == "_check_system_limits":
            return _check_system_limits
        if name.startswith("_"):
            return Placeholder(f"concurrent.futures.process.{name}")
        futures = importlib.import_module("polyproc.futures")
        try:
            return getattr(futures, name)
        except AttributeError:
            raise AttributeError(
                f"polyproc.futures has no {name!r} (asked for as "
                f"concurrent.futures.process.{name})") from None


def resolve(name: str) -> types.ModuleType:
    """The module that stands for ``name`` (a ``multiprocessing*`` or executor name)."""
    if name == "concurrent.futures.process":
        return FuturesProcessModule(name, "polyproc.futures, for CPython's test suites")
    if name in GENERATED:
        module = types.ModuleType(name)
        module.__file__ = f"<generated by polyproc.testing.cpython: {name}>"
        sys.modules[name] = module
        exec(_GENERATED_SOURCE.format(method=GENERATED[name]), module.__dict__)
        return module
    if name == "multiprocessing":
        for sub in GAPS:  # ``from multiprocessing import util`` bypasses this hook
            _fill_gaps("multiprocessing." + sub, importlib.import_module("polyproc." + sub))
        return importlib.import_module("polyproc")
    sub = name.partition(".")[2]
    if sub.split(".")[0] in ABSENT:
        # ``from multiprocessing import heap`` asks for ``polyproc.heap``: one stub for both.
        stdlib_name = "multiprocessing." + sub
        stub = sys.modules.get(stdlib_name)
        if not isinstance(stub, AbsentModule):
            stub = AbsentModule(stdlib_name, f"CPython internal {stdlib_name}: not in polyproc")
        sys.modules[stdlib_name] = sys.modules["polyproc." + sub] = stub
        return stub
    try:
        module = importlib.import_module("polyproc." + sub)
    except ModuleNotFoundError as exc:
        if exc.name != "polyproc." + sub:
            raise
        raise ModuleNotFoundError(
            f"No module named {name!r}: polyproc has no polyproc.{sub}", name=name) from None
    _fill_gaps(name, module)
    return module


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a throw-away module; exec_module puts the real one in sys.modules

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system returns whatever sys.modules holds after exec_module, so the
        # alias is the polyproc module itself (identity), not a copy.
        sys.modules[module.__name__] = resolve(module.__name__)


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``multiprocessing*`` and ``concurrent.futures.process`` in polyproc."""

    _loader = _AliasLoader()

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in GENERATED:
            parent = sys.modules.get("test")
            search = getattr(parent, "__path__", None)
            if importlib.machinery.PathFinder.find_spec(fullname, search) is not None:
                return None  # the interpreter ships it: use the real one
        elif not (fullname == "multiprocessing" or fullname.startswith("multiprocessing.")
                  or fullname == "concurrent.futures.process"
                  or (fullname.startswith("polyproc.")
                      and fullname.split(".")[1] in ABSENT)):
            return None
        return importlib.machinery.ModuleSpec(fullname, self._loader, is_package=True)


def stdlib_modules_loaded() -> list[str]:
    """Names of loaded modules whose file is the stdlib's multiprocessing or executor."""
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(STDLIB_FILES[0]) or path == STDLIB_FILES[1]:
            found.append(name)
    return found


def installed() -> bool:
    return any(isinstance(f, AliasFinder) for f in sys.meta_path)


def install() -> None:
    """Install the aliases in this process (idempotent); refuse if the stdlib is loaded."""
    if installed():
        return
    early = stdlib_modules_loaded()
    if early:
        _alarm(f"stdlib modules imported before the alias hook: {early}")
        raise ImportError(f"polyproc CPython-suite hook: stdlib {early} already imported")
    sys.meta_path.insert(0, AliasFinder())
    if os.environ.get(ENV_ALARM):
        import atexit

        atexit.register(_check_at_exit)


def verify() -> list[str]:
    """What is wrong with the aliases in this process (empty list: all good)."""
    problems = []
    if not installed():
        problems.append("alias hook not installed")
    polyproc = importlib.import_module("polyproc")
    src = os.environ.get(ENV_SRC)
    if src and not os.path.abspath(str(polyproc.__file__)).startswith(os.path.join(src, "")):
        problems.append(f"polyproc imported from {polyproc.__file__}, expected under {src}")
    import concurrent.futures as cf

    # By name, through the alias hook: these must be polyproc's modules (checked here).
    mp = importlib.import_module("multiprocessing")
    mp_pool = importlib.import_module("multiprocessing.pool")
    if mp is not polyproc or mp.Process is not polyproc.Process:
        problems.append(f"multiprocessing is {mp!r}, not polyproc")
    if mp_pool.Pool is not importlib.import_module("polyproc.pool").Pool:
        problems.append("multiprocessing.pool.Pool is not polyproc.pool.Pool")
    futures = importlib.import_module("polyproc.futures")
    if cf.ProcessPoolExecutor is not futures.ProcessPoolExecutor:
        problems.append(f"concurrent.futures.ProcessPoolExecutor is {cf.ProcessPoolExecutor!r}")
    loaded = stdlib_modules_loaded()
    if loaded:
        problems.append(f"stdlib modules loaded: {loaded}")
    return problems


def report() -> dict:
    """This process's alias state, for the runner's probe."""
    try:
        problems = verify()
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        problems = [f"verify() raised {exc!r}"]
    return {"pid": os.getpid(), "argv": sys.argv[:3], "flags": _flags(), "problems": problems}


def _flags() -> str:
    f = sys.flags
    return "".join(c for c, on in (("E", f.ignore_environment), ("I", f.isolated),
                                   ("S", f.no_site)) if on)


def _alarm(message: str) -> None:
    path = os.environ.get(ENV_ALARM)
    if not path:
        return
    line = f"pid {os.getpid()} argv {sys.argv[:3]!r}: {message}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _check_at_exit() -> None:
    loaded = stdlib_modules_loaded()
    if loaded:
        _alarm(f"stdlib modules loaded: {loaded}")
