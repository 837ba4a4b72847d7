"""The throw-away environment the CPython-suite runner runs every test process in.

``build()`` makes, in a temporary directory:

- a virtual environment (``--system-site-packages``, no pip) of the running interpreter whose
  site-packages holds ``_polyproc_cpython_hook.py`` (a copy of ``_cpython_hook``) and a
  ``.pth`` file that puts polyproc's source directory on ``sys.path`` and installs the hook.
  Its ``python`` is what the runner starts test processes with, so it is their
  ``sys.executable``, and so what every child, helper and ``python -E``/``-I`` subprocess of the
  suites runs: all of them read that ``.pth`` at start-up (``-E``/``-I`` ignore ``PYTHONPATH``
  but not site-packages).
- per test process, a working directory holding a ``multiprocessing`` package that loads the
  hook by path and becomes polyproc: ``python -S -c ...`` (no site, so no ``.pth``) finds it as
  ``sys.path[0]``. A ``-S`` process started in another directory is not covered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HOOK_NAME = "_polyproc_cpython_hook"

_SHIM = f'''\
"""polyproc.testing.cpython: this interpreter skipped site (python -S), so the .pth hook did
not run. Load the hook by path and become polyproc, never the stdlib."""
import os as _os
import sys as _sys

for _p in _os.environ.get("POLYPROC_CPYTHON_PATHS", "").split(_os.pathsep):
    if _p and _p not in _sys.path:
        _sys.path.append(_p)
if "{HOOK_NAME}" not in _sys.modules:
    import importlib.util as _iu

    _spec = _iu.spec_from_file_location("{HOOK_NAME}", _os.environ["POLYPROC_CPYTHON_HOOK"])
    _hook = _iu.module_from_spec(_spec)
    _sys.modules["{HOOK_NAME}"] = _hook
    _spec.loader.exec_module(_hook)
_sys.modules["{HOOK_NAME}"].install()
_sys.modules[__name__] = _sys.modules["{HOOK_NAME}"].resolve("multiprocessing")
'''


@dataclass
class Env:
    """Where the runner's test processes run, and with what environment."""

    root: Path
    python: str
    env: dict[str, str]
    alarm: Path
    src: str
    _count: int = field(default=0)

    def workdir(self, label: str) -> Path:
        """A fresh working directory for one test process, with the ``-S`` shim."""
        self._count += 1
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in label)[:80]
        path = self.root / "work" / f"{self._count:04d}-{safe}"
        (path / "multiprocessing").mkdir(parents=True)
        (path / "multiprocessing" / "__init__.py").write_text(_SHIM)
        return path

    def alarms(self) -> list[str]:
        """Lines written by processes that found stdlib multiprocessing loaded."""
        try:
            return self.alarm.read_text().splitlines()
        except FileNotFoundError:
            return []

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def build(src: str, keep_root: str | None = None) -> Env:
    """Make the environment; ``src`` is the directory holding the ``polyproc`` package."""
    root = Path(keep_root or tempfile.mkdtemp(prefix="polyproc-cpython-"))
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    res = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(
            f"could not create a virtual environment with {sys.executable} -m venv "
            f"(needed so that python -E subprocesses get the aliases too):\n{res.stderr}")
    site = _site_packages(venv)
    if not site.is_dir():
        raise RuntimeError(f"the new virtual environment has no {site}")
    hook_src = Path(__file__).with_name("_cpython_hook.py")
    shutil.copyfile(hook_src, site / f"{HOOK_NAME}.py")
    (site / "00-polyproc-cpython.pth").write_text(
        f"{src}\nimport {HOOK_NAME}; {HOOK_NAME}.install()\n")
    extra = [src]
    try:
        import cloudpickle  # polyproc's dependency: a -S process must find it too

        extra.append(str(Path(cloudpickle.__file__).parent.parent))
    except ImportError:
        pass
    alarm = root / "alarm.log"
    env = dict(os.environ)
    env.update({
        "POLYPROC_CPYTHON_SRC": src,
        "POLYPROC_CPYTHON_HOOK": str(site / f"{HOOK_NAME}.py"),
        "POLYPROC_CPYTHON_ALARM": str(alarm),
        "POLYPROC_CPYTHON_PATHS": os.pathsep.join(extra),
        "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("PYTHONHOME", None)
    return Env(root=root, python=str(venv / "bin" / "python"), env=env, alarm=alarm, src=src)
