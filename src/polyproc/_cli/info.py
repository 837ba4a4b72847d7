"""``python -m polyproc info``: versions, start methods, CPU count and optional extras."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

#: Optional packages polyproc can use, as (label, distribution names to try).
EXTRAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("cloudpickle", ("cloudpickle",)),
    ("tqdm", ("tqdm",)),
    ("numpy", ("numpy",)),
    ("dask", ("dask",)),
    ("distributed", ("distributed",)),
    ("psutil", ("psutil",)),
    ("matplotlib", ("matplotlib",)),
)


def polyproc_version() -> str:
    """The installed polyproc version (``polyproc.__version__``, else the package metadata)."""
    try:
        import polyproc

        version = getattr(polyproc, "__version__", None)
        if version:
            return str(version)
    except ImportError:
        pass
    try:
        return metadata.version("polyproc")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def extra_version(dists: tuple[str, ...]) -> str | None:
    """Version of the first installed distribution among *dists*, or None (nothing is imported)."""
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _start_methods() -> tuple[str, str]:
    """(available start methods, default start method) as display strings."""
    try:
        import polyproc

        methods = ", ".join(polyproc.get_all_start_methods())
    except (ImportError, AttributeError, NotImplementedError) as exc:
        methods = f"not yet available ({type(exc).__name__})"
    try:
        import polyproc

        default = str(polyproc.get_start_method())
    except (ImportError, AttributeError, NotImplementedError) as exc:
        default = f"not yet available ({type(exc).__name__})"
    return methods, default


def _cpu_count() -> str:
    try:
        import polyproc

        count = str(polyproc.cpu_count())
    except (ImportError, AttributeError, NotImplementedError):
        count = str(os.cpu_count())
    if hasattr(os, "sched_getaffinity"):
        count += f" (usable by this process: {len(os.sched_getaffinity(0))})"
    return count


def collect() -> list[tuple[str, str]]:
    """The ``info`` report as (label, value) rows."""
    methods, default = _start_methods()
    rows = [
        ("polyproc", polyproc_version()),
        ("python", f"{platform.python_version()} ({platform.python_implementation()}) "
                   f"at {sys.executable}"),
        ("platform", platform.platform()),
        ("start methods", methods),
        ("default start method", default),
        ("cpu_count", _cpu_count()),
    ]
    for label, dists in EXTRAS:
        version = extra_version(dists)
        rows.append((f"extra: {label}", version if version else "not installed"))
    return rows


def run() -> int:
    """Print the report; return the exit code (0)."""
    rows = collect()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label + ':':<{width + 1}} {value}")
    return 0
