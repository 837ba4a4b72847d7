"""The runner of CPython's own test suites against polyproc (``polyproc.testing.cpython``).

The fast tests (always run) check the alias hook and that the runner refuses to run on the
stdlib. The smoke tests run one small class of each suite through the whole runner; they take
~30 s and run only with ``POLYPROC_CPYTHON_SUITES=1``, under ``POLYPROC_CPYTHON_PYTHON`` if set
(an interpreter that ships ``test.test_concurrent_futures``, e.g. 3.13, for the futures one).
The full suites are a manual job: ``python -m polyproc.testing.cpython`` (see README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HOOK_FILE = SRC / "polyproc" / "testing" / "_cpython_hook.py"

RUNNER_PYTHON = os.environ.get("POLYPROC_CPYTHON_PYTHON") or sys.executable
slow = pytest.mark.skipif(os.environ.get("POLYPROC_CPYTHON_SUITES") != "1",
                          reason="slow (~30 s): set POLYPROC_CPYTHON_SUITES=1 to run")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("POLYPROC_CPYTHON_ALARM", None)
    return env


@pytest.mark.timeout(60)
def test_hook_aliases_stdlib_names_to_polyproc() -> None:
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("_polyproc_cpython_hook", {str(HOOK_FILE)!r})
        hook = importlib.util.module_from_spec(spec)
        sys.modules["_polyproc_cpython_hook"] = hook
        spec.loader.exec_module(hook)
        hook.install()
        import multiprocessing, multiprocessing.pool, multiprocessing.connection, polyproc
        import polyproc.futures
        from concurrent import futures
        from concurrent.futures.process import BrokenProcessPool, _check_system_limits
        from multiprocessing import resource_tracker
        assert multiprocessing is polyproc and multiprocessing.pool is polyproc.pool
        assert futures.ProcessPoolExecutor is polyproc.futures.ProcessPoolExecutor
        assert BrokenProcessPool is polyproc.futures.BrokenProcessPool
        _check_system_limits()
        try:
            resource_tracker._CLEANUP_FUNCS["x"]
        except hook.CPythonInternalError as exc:
            assert "resource_tracker._CLEANUP_FUNCS" in str(exc)
        else:
            raise AssertionError("a placeholder did not raise")
        try:
            import multiprocessing.no_such_module
        except ModuleNotFoundError as exc:
            assert "polyproc has no polyproc.no_such_module" in str(exc)
        else:
            raise AssertionError("an unknown submodule imported")
        assert hook.verify() == [], hook.verify()
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(), timeout=50)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.timeout(60)
def test_worker_refuses_to_run_on_the_stdlib(tmp_path: Path) -> None:
    """Without the hook (plain interpreter), a test process exits loudly, running nothing."""
    res = subprocess.run(
        [sys.executable, "-m", "polyproc.testing._cpython_worker", "collect",
         "--events", str(tmp_path / "out.json")],
        capture_output=True, text=True, env=_env(), timeout=50, cwd=tmp_path)
    assert res.returncode == 4, (res.stdout, res.stderr)
    assert "FATAL: stdlib names do not resolve to polyproc" in res.stderr
    assert "multiprocessing" not in (tmp_path / "out.json").read_text()


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out.json"
    res = subprocess.run(
        [RUNNER_PYTHON, "-m", "polyproc.testing.cpython", "--json", str(out), "--jobs", "1",
         "--timeout", "30", *args],
        capture_output=True, text=True, env=_env(), timeout=170)
    assert out.exists(), res.stderr
    return res, json.loads(out.read_text())


def _check_probe(report: dict) -> None:
    where = {row["where"]: row["report"]["problems"] for row in report["probe"]}
    for name in ("test process", "spawn child", "forkserver Pool worker",
                 "fork ProcessPoolExecutor worker", "manager server process",
                 "python -E subprocess", "python -I subprocess"):
        assert where[name] == [], (name, where[name])


@slow
@pytest.mark.timeout(180)
def test_smoke_multiprocessing_suite(tmp_path: Path) -> None:
    res, report = _run(tmp_path, "--suite", "multiprocessing", "--start-method", "spawn",
                       "-k", "WithProcessesTestLock.")
    _check_probe(report)
    (run,) = report["runs"]
    (cls,) = run["classes"]
    assert cls["class"] == "WithProcessesTestLock"
    assert run["totals"]["passed"] == len(cls["tests"]) >= 3, res.stdout
    assert res.returncode == 0, res.stdout + res.stderr
    assert "== TOTAL multiprocessing/spawn" in res.stdout


@slow
@pytest.mark.timeout(180)
def test_smoke_futures_suite(tmp_path: Path) -> None:
    res, report = _run(tmp_path, "--suite", "futures", "--start-method", "forkserver",
                       "-k", "ProcessPoolForkserverFailingInitializerTest.")
    (run,) = report["runs"]
    if "unavailable" in run:
        assert "does not ship test.test_concurrent_futures" in run["unavailable"]
        pytest.skip(run["unavailable"])
    (cls,) = run["classes"]
    assert cls["class"] == "ProcessPoolForkserverFailingInitializerTest"
    assert sum(run["totals"].values()) == len(cls["tests"]) >= 1
    assert "== TOTAL futures/forkserver" in res.stdout


@pytest.mark.timeout(60)
def test_test_process_gets_keyboard_interrupt_when_started_with_sigint_ignored() -> None:
    # A runner started in the background (`cmd &` in a script) hands SIGINT ignored down to
    # its test processes; the suites' tests that SIGINT themselves then failed
    # (Condition.test_wait_result, SharedMemoryServer_ignores_sigint).
    import signal

    code = textwrap.dedent("""
        import os, signal, time
        from polyproc.testing import _cpython_worker
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert _cpython_worker.default_sigint() is True
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)
        except KeyboardInterrupt:
            print("interrupted")
        assert _cpython_worker.default_sigint() is False
    """)
    res = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=50,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "interrupted"
