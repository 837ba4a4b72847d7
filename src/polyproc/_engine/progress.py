"""Progress bars for ``progress=True``: a tqdm bar updated as task outcomes arrive.

Bars are drawn by the parent only (outcomes arrive there), so tqdm's cross-process lock is not
needed; we set it to None before tqdm would create it, because creating it would import the
stdlib ``multiprocessing`` package.
"""

from __future__ import annotations

from typing import Any


class _Bar:
    __slots__ = ("bar",)

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def make_progress(progress: Any, total: int | None, name: str) -> _Bar:
    """A progress callback: ``progress`` is True, a dict of tqdm options, or a tqdm bar."""
    try:
        from tqdm import std as tqdm_std
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "progress=True needs tqdm: pip install 'polyproc[progress]' (or pip install tqdm)"
        ) from None
    if not hasattr(tqdm_std.TqdmDefaultWriteLock, "mp_lock"):
        tqdm_std.TqdmDefaultWriteLock.mp_lock = None
    if hasattr(progress, "update") and hasattr(progress, "close"):
        return _Bar(progress)
    options = {"total": total, "desc": name, "unit": "task"}
    if isinstance(progress, dict):
        options.update(progress)
    return _Bar(tqdm(**options))
