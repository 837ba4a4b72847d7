"""Run small Python programs in a fresh interpreter for tests (with a hard timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_script(tmp_path: Path, code: str, *, name: str = "prog.py", timeout: float = 60,
               args: tuple[str, ...] = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Write ``code`` to ``tmp_path/name`` and run it; returns the completed process."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout,
        cwd=str(cwd or tmp_path), env=env,
    )
