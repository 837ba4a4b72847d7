"""Whole-program mode (``python -m polyproc run``): real libraries that import the stdlib's
``multiprocessing`` themselves run on polyproc unchanged, with the stdlib's results (#12).

Each script runs twice, with plain ``python`` (the stdlib) and with ``python -m polyproc run``;
the outputs must match, except for the name of the module that did the work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

SCRIPTS = Path(__file__).parent / "scripts"
METHODS = ["fork", "spawn", "forkserver"]


def _run(args: list[str]) -> str:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=240,
                         cwd=SCRIPTS)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().splitlines()[-1]


def _both(script: str, method: str) -> tuple[str, str]:
    ours = _run(["-m", "polyproc", "run", script, method])
    theirs = _run([script, method])
    return ours, theirs


@pytest.mark.parametrize("method", METHODS)
def test_torch_dataloader(method: str) -> None:
    pytest.importorskip("torch")
    ours, theirs = _both("torch_dataloader.py", method)
    assert ours.endswith(" polyproc") and theirs.endswith(" multiprocessing")
    assert ours.rsplit(" ", 1)[0] == theirs.rsplit(" ", 1)[0]


@pytest.mark.parametrize("method", METHODS)
def test_tqdm_process_map(method: str) -> None:
    pytest.importorskip("tqdm")
    ours, theirs = _both("tqdm_process_map.py", method)
    assert ours == theirs.replace("multiprocessing", "polyproc")


@pytest.mark.parametrize("method", METHODS)
def test_dask_processes_scheduler(method: str) -> None:
    pytest.importorskip("dask")
    ours, theirs = _both("dask_processes.py", method)
    assert ours == theirs.replace("multiprocessing", "polyproc")


@pytest.mark.parametrize("method", METHODS)
def test_stdlib_names_resolve_to_polyproc_everywhere(method: str) -> None:
    out = subprocess.run([sys.executable, "-m", "polyproc", "run", "stdlib_names.py", method],
                         capture_output=True, text=True, timeout=240, cwd=SCRIPTS)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == (f"{method} polyproc polyproc polyproc "
                         "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81] [0, 1, 4, 9, 16]")
    assert lines[-1] == "internal refused: multiprocessing.heap.BufferWrapper"


def test_run_module_and_install_function(tmp_path: Path) -> None:
    (tmp_path / "prog_mod.py").write_text(
        "import multiprocessing, sys\nprint(multiprocessing.__name__, sys.argv[1:])\n")
    out = subprocess.run([sys.executable, "-m", "polyproc", "run", "-m", "prog_mod", "a", "b"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.strip() == "polyproc ['a', 'b']", out.stderr
    code = ("import warnings, multiprocessing\nwarnings.simplefilter('error')\nimport polyproc\n"
            "try:\n    polyproc.install()\nexcept RuntimeWarning as w:\n    print('warned', w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert "warned polyproc.install() ran after the stdlib's multiprocessing" in out.stdout
