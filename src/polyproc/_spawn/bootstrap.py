"""The child's side of spawn and forkserver: restore the parent's setup, then run.

The parent sends two frames: the *preparation data* (name, authkey, sys.path, cwd, how to
find the main module, logging) and the pickled ``Process``. The main module is re-imported
under the name ``__mp_main__`` so its ``if __name__ == '__main__':`` block does not run again.
"""

from __future__ import annotations

import os
import pickle
import runpy
import sys
import types

from .. import process, util
from . import _popen

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from typing import Any

_inherited_fds: list[int] = []  # fds passed by the fork server, indexed by the parent's DupFd


def get_preparation_data(name: str, method: str, popen: Any = None) -> dict[str, Any]:
    """What a fresh child needs to reproduce this process's setup.

    With ``popen`` (the child being started, while it pickles) the child also gets this
    tree's resource tracker.
    """
    current = process.current_process()
    data: dict[str, Any] = {
        "name": name,
        "authkey": bytes(current.authkey),
        "sys_path": list(sys.path),
        "sys_argv": list(sys.argv),
        "dir": os.getcwd(),
        "orig_dir": process.ORIGINAL_DIR,
        "start_method": method,
        "log": util._logging_config(),
    }
    from .. import _stdlib_compat

    stdlib_key = _stdlib_compat.stdlib_authkey()
    if stdlib_key is not None:
        data["stdlib_authkey"] = stdlib_key
    if popen is not None:
        from .._resources import tracker

        data["tracker_fd"] = popen.DupFd(popen.duplicate_for_child(tracker.getfd()))
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    main_name = getattr(spec, "name", None)
    if main_name is not None:
        data["init_main_from_name"] = main_name
    else:
        main_path = getattr(main_module, "__file__", None)
        if main_path is not None:
            if not os.path.isabs(main_path) and process.ORIGINAL_DIR is not None:
                main_path = os.path.join(process.ORIGINAL_DIR, main_path)
            # '<stdin>' and friends: nothing to import (its functions travel by value).
            if os.path.isfile(main_path):
                data["init_main_from_path"] = os.path.normpath(main_path)
    return data


def prepare(data: dict[str, Any]) -> None:
    """Apply preparation data in the child (may import the parent's main module)."""
    current = process.current_process()
    if "name" in data:
        current.name = data["name"]
    if "authkey" in data:
        current.authkey = data["authkey"]
    if "log" in data:
        util._apply_logging_config(data["log"])
    if "sys_path" in data:
        sys.path = data["sys_path"]
    if "sys_argv" in data:
        sys.argv = data["sys_argv"]
    if "dir" in data:
        try:
            os.chdir(data["dir"])
        except OSError:
            pass
    if "orig_dir" in data:
        process.ORIGINAL_DIR = data["orig_dir"]
    if "tracker_fd" in data:
        from .._resources import tracker

        tracker._tracker._set_inherited_fd(data["tracker_fd"].detach())
    if "start_method" in data:
        from .. import context

        context._force_start_method(data["start_method"])
    if "init_main_from_name" in data:
        _fixup_main_from_name(data["init_main_from_name"])
    elif "init_main_from_path" in data:
        _fixup_main_from_path(data["init_main_from_path"])
    if "stdlib_authkey" in data:
        from .. import _stdlib_compat

        _stdlib_compat.adopt_parent_authkey(data["stdlib_authkey"])


def _install_main(globals_: dict[str, Any]) -> None:
    module = types.ModuleType("__mp_main__")
    module.__dict__.update(globals_)
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module


def _fixup_main_from_name(mod_name: str) -> None:
    # A package's __main__ (e.g. `python -m pytest`) is a program, not a library: never rerun it.
    if mod_name == "__main__" or mod_name.endswith(".__main__"):
        return
    current_main = sys.modules.get("__main__")
    if getattr(getattr(current_main, "__spec__", None), "name", None) == mod_name:
        return
    _install_main(runpy.run_module(mod_name, run_name="__mp_main__", alter_sys=True))


def _fixup_main_from_path(main_path: str) -> None:
    current_main = sys.modules.get("__main__")
    if os.path.splitext(os.path.basename(main_path))[0] == "ipython":
        return
    if getattr(current_main, "__file__", None) == main_path:
        return
    _install_main(runpy.run_path(main_path, run_name="__mp_main__"))


def import_main_for_preload(data: dict[str, Any]) -> None:
    """Used by the fork server: import the parent's main module once, for all children."""
    process.current_process()._inheriting = True  # type: ignore[attr-defined]
    try:
        prepare(data)
    finally:
        del process.current_process()._inheriting  # type: ignore[attr-defined]


def run_child(data_fd: int, parent_sentinel: int | None) -> int:
    """Read the preparation data and the Process from ``data_fd``, then run it."""
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]
    try:
        try:
            try:
                first = _popen.read_frame(data_fd)
            except EOFError:
                # The parent closed the pipe before sending anything: its start of this
                # child failed (and raised there), e.g. its fork server died meanwhile.
                return 1
            prep = pickle.loads(first)
            prepare(prep)
            process_obj = pickle.loads(_popen.read_frame(data_fd))
        finally:
            del current._inheriting  # type: ignore[attr-defined]
    except SystemExit as e:
        if not isinstance(e.code, int) and e.code is not None:
            _popen.note_error(f"SystemExit: {e.code}", _popen.AT_START)
        return e.code if isinstance(e.code, int) else 1
    except BaseException as e:
        import traceback

        traceback.print_exc()
        util._flush_std_streams()
        # What the parent sees besides the exit code (e.g. a pool names it in its error).
        _popen.note_error(_popen.error_line(e), _popen.AT_START)
        return 1
    return process_obj._bootstrap(parent_sentinel=parent_sentinel)


def spawn_main(data_fd: int, death_fd: int) -> None:
    """Entry point of a spawned interpreter (see ``_spawn.spawn``)."""
    # Grandchildren must not inherit our death pipe, or it would stay open after we die.
    os.set_inheritable(death_fd, False)
    os.set_inheritable(data_fd, False)
    _popen.set_own_sentinel_fd(death_fd)
    exitcode = run_child(data_fd, parent_sentinel=data_fd)
    _popen.send_error()
    sys.exit(exitcode)
