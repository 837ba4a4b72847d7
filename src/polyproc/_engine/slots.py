"""A table in shared memory where each worker says what it is running right now.

Row ``i`` belongs to the worker in pool slot ``i``: ``[batch_id, position, start_ns, pid]``.
Workers write it without locks or syscalls; the engine reads it to blame the right task when
a worker dies and to enforce per-task timeouts. The memory is an anonymous ``memfd``: it has
no name, so it cannot leak, and it reaches spawned workers as an fd.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from .. import reduction

WIDTH = 4


class Slots:
    """``n`` rows of ``WIDTH`` int64 values shared with the workers."""

    def __init__(self, n: int, fd: int | None = None) -> None:
        self.n = n
        made = fd is None
        if fd is None:
            fd = os.memfd_create("polyproc-slots", os.MFD_CLOEXEC)
        try:
            if made:
                os.ftruncate(fd, max(1, n) * WIDTH * 8)
            self._map = mmap.mmap(fd, max(1, n) * WIDTH * 8)
        except BaseException:  # out of memory or fds: don't leak the memfd
            if made:
                os.close(fd)
            raise
        self._fd = fd
        self._table = memoryview(self._map).cast("q")

    def view(self, i: int) -> memoryview:
        """Row ``i`` as a writable int64 memoryview."""
        return self._table[i * WIDTH:(i + 1) * WIDTH]

    def read(self, i: int) -> tuple[int, int, int, int]:
        """A consistent snapshot of row ``i`` (retried while the worker is writing it)."""
        row = self.view(i)
        while True:
            first = tuple(row)
            if tuple(row) == first:
                return first  # type: ignore[return-value]

    def reset(self, i: int) -> None:
        row = self.view(i)
        for k in range(WIDTH):
            row[k] = 0

    def close(self) -> None:
        self._table.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a worker row view is still alive; the mapping goes with it
        try:
            os.close(self._fd)
        except OSError:
            pass

    def __reduce__(self) -> Any:
        return _rebuild_slots, (self.n, reduction.DupFd(self._fd))


def _rebuild_slots(n: int, dupfd: Any) -> Slots:
    return Slots(n, dupfd.detach())
