"""The spawn start method: the child is a fresh interpreter.

The parent pickles the preparation data and the Process, starts ``python -c
'...spawn_main(data_fd, death_fd)'`` with those two pipe ends (and any fds the Process
carries) inherited under the same numbers, then writes the data into the pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from .. import reduction, util
from ._popen import (
    PopenBase,
    child_command,
    pickle_start_data,
    write_frames,
)
from ._popen import set_executable as set_executable


class Popen(PopenBase):
    """Start ``process_obj`` in a fresh interpreter."""

    method = "spawn"
    DupFd = reduction._InheritedFd

    def __init__(self, process_obj: Any) -> None:
        self.returncode = None
        self.finalizer = None
        self._fds: list[int] = []
        self._launch(process_obj)

    def duplicate_for_child(self, fd: int) -> int:
        """The child inherits ``fd`` under the same number."""
        self._fds.append(fd)
        return fd

    def _launch(self, process_obj: Any) -> None:
        prep_data, obj_data = pickle_start_data(self, process_obj)
        parent_r, child_w = os.pipe()
        try:
            child_r, parent_w = os.pipe()
        except BaseException:  # out of fds: close what was made
            util.close_fds(parent_r, child_w)
            raise
        try:
            cmd = child_command(
                "from polyproc._spawn.bootstrap import spawn_main; "
                f"spawn_main({child_r}, {child_w})"
            )
            self._proc = subprocess.Popen(
                cmd, pass_fds=[child_r, child_w, *self._fds], close_fds=True
            )
        except BaseException:
            util.close_fds(parent_r, parent_w)
            raise
        finally:
            util.close_fds(child_r, child_w)
        self.pid = self._proc.pid
        self.sentinel = parent_r
        self.finalizer = util.Finalize(self, util.close_fds, (parent_r, parent_w))
        write_frames(parent_w, prep_data, obj_data)

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            code = self._proc.poll() if flag else self._proc.wait()
            self.returncode = code
        return self.returncode


def freeze_support() -> None:
    """In a frozen executable started as a spawn child, run the child and exit."""
    if len(sys.argv) >= 2 and sys.argv[-1] == "--polyproc-fork":
        pass  # frozen executables run ``-c`` code through their own bootstrap
