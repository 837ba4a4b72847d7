"""The fork start method: the child is a copy of this process made by ``os.fork``."""

from __future__ import annotations

import os
from typing import Any

from .. import util
from ._popen import PopenBase, after_fork_in_child, exit_forked_child, set_own_sentinel_fd


class Popen(PopenBase):
    """Start ``process_obj`` in a forked child."""

    method = "fork"

    def __init__(self, process_obj: Any) -> None:
        # Share this tree's resource tracker with the child; one the child started itself
        # would unlink the child's named resources when the child exits, while we use them.
        from .._resources import tracker

        tracker.ensure_running()
        util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        fds: list[int] = []
        try:  # out of fds or processes (EMFILE, EAGAIN): close what was made, then raise
            fds += os.pipe()  # our sentinel: EOF when the child has exited
            fds += os.pipe()  # the child's parent sentinel: EOF when we exit
            self.pid = os.fork()
        except BaseException:
            util.close_fds(*fds)
            raise
        parent_r, child_w, child_r, parent_w = fds
        if self.pid == 0:
            code = 1
            try:
                os.close(parent_r)
                os.close(parent_w)
                after_fork_in_child()
                set_own_sentinel_fd(child_w)
                code = process_obj._bootstrap(parent_sentinel=child_r)
            finally:
                exit_forked_child(code)
        os.close(child_w)
        os.close(child_r)
        self.sentinel = parent_r
        self.finalizer = util.Finalize(self, util.close_fds, (parent_r, parent_w))

    def duplicate_for_child(self, fd: int) -> int:
        return fd
