"""Whether this thread is pickling a process object to start a child (a leaf module).

Objects that may only pass to a child at its start (locks, queues, the authkey) ask
``assert_spawning``/``get_spawning_popen``; the start methods set it around pickling.
"""

from __future__ import annotations

import threading

from . import _stdlib_compat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_tls = threading.local()


def get_spawning_popen() -> Any:
    """The Popen currently pickling its process object (None outside process start)."""
    return getattr(_tls, "spawning_popen", None)


def set_spawning_popen(popen: Any) -> None:
    """Mark that ``popen`` is pickling its process object in this thread (None: done)."""
    _tls.spawning_popen = popen
    _stdlib_compat.set_spawning_popen(popen)


def assert_spawning(obj: Any) -> None:
    """Raise unless ``obj`` is being pickled to start a process (inheritance only)."""
    if get_spawning_popen() is None:
        raise RuntimeError(
            f"{type(obj).__name__} objects should only be shared between processes through inheritance"
        )
