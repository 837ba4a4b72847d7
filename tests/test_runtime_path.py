"""polyproc found only through a ``sys.path`` entry added at run time (issue #13).

A vendored copy, a notebook's ``sys.path.insert(0, "src")``, a checkout used without
installing: spawn and forkserver children must find polyproc where the parent found it.
The script runs with ``python -S`` (no site-packages, so no installed polyproc) and a copy of
the package in a temporary directory put on ``sys.path`` by the script itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

import polyproc

pytestmark = pytest.mark.timeout(120)

SCRIPT = """
import sys
sys.path.insert(0, {vendored!r})
sys.path.append({deps!r})  # cloudpickle, without the installed polyproc
import polyproc
import polyproc.futures as pf
assert polyproc.__file__.startswith({vendored!r}), polyproc.__file__

def sq(x):
    return x * x

def where(_=None):
    import polyproc
    return polyproc.__file__

if __name__ == "__main__":
    for method in ("spawn", "forkserver"):
        ctx = polyproc.get_context(method)
        with ctx.Pool(2) as pool:
            assert pool.map(sq, range(20)) == [i * i for i in range(20)]
            assert pool.apply(lambda: 7) == 7
            assert pool.apply(where).startswith({vendored!r})
        with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            assert list(ex.map(sq, range(5))) == [0, 1, 4, 9, 16]
        p = ctx.Process(target=lambda: sys.exit(3))
        p.start()
        p.join(30)
        assert p.exitcode == 3, p.exitcode
        print(method, "ok")
"""


def test_children_find_polyproc_on_a_runtime_path(tmp_path: Path) -> None:
    vendored = tmp_path / "vendor"
    shutil.copytree(Path(polyproc.__file__).parent, vendored / "polyproc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    deps = tmp_path / "deps"
    shutil.copytree(Path(cloudpickle.__file__).parent, deps / "cloudpickle",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(SCRIPT.format(vendored=str(vendored), deps=str(deps))))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-S", str(script)], capture_output=True, text=True,
                         timeout=100, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["spawn", "ok", "forkserver", "ok"]
