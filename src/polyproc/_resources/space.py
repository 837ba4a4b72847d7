"""Clear errors for a full shared-memory filesystem (``/dev/shm`` on Linux).

A POSIX shared-memory object (``SharedMemory``, named semaphores) is a file of a RAM-backed
filesystem that is often small (Docker gives 64 MiB). Creating an object there reserves no
space: a process that then writes more than is free dies of ``SIGBUS``. So a block larger
than the free space is refused when it is created, and ``ENOSPC`` says where and what to do.
"""

from __future__ import annotations

import errno
import os

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else "shared memory"

FIX = ("free space there (`python -m polyproc doctor` lists polyproc entries that leaked, "
       "`--clean` removes them) or enlarge it (Docker: `--shm-size=1g`; as root: "
       "`mount -o remount,size=2g /dev/shm`)")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def free_bytes(fd: int) -> int | None:
    """Bytes an unprivileged process may still write on the filesystem of ``fd`` (None:
    unknown)."""
    try:
        st = os.fstatvfs(fd)
    except (OSError, AttributeError):
        return None
    if not st.f_blocks:  # reports no size at all (some systems' shm): nothing to tell
        return None
    return st.f_bavail * st.f_frsize


def check_room(fd: int, size: int, what: str) -> None:
    """Raise ``OSError(ENOSPC)`` if the filesystem of ``fd`` cannot hold ``size`` more bytes."""
    free = free_bytes(fd)
    if free is not None and size > free:
        raise OSError(errno.ENOSPC, f"no room in {SHM_DIR} for {what} of {_mib(size)}: only "
                      f"{_mib(free)} free there (writing to it would kill this process with "
                      f"SIGBUS); {FIX}", SHM_DIR)


def full_error(exc: OSError, what: str) -> OSError:
    """``exc`` (ENOSPC from creating ``what``) as an error naming the full filesystem."""
    err = OSError(exc.errno, f"cannot create {what}: {SHM_DIR} is full "
                  f"({os.strerror(exc.errno or errno.ENOSPC)}); {FIX}", SHM_DIR)
    err.__cause__ = exc
    return err
