"""A real Dask cluster for tests: a scheduler and single-threaded workers started as processes
with the ``dask scheduler`` / ``dask worker`` tools on loopback (with nannies, which restart a
killed worker). Used by tests/test_dask.py and tests/test_backend_faults.py."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _scripts import SRC

TESTS = str(Path(__file__).resolve().parent)


def have_distributed() -> bool:
    try:
        return importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):
        return False


HAVE_DISTRIBUTED = have_distributed()
needs_dask = pytest.mark.skipif(
    not HAVE_DISTRIBUTED,
    reason="dask.distributed is not installed: pip install 'polyproc[dask]'")


def _dask_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, env.get("PYTHONPATH", "")])
    return env


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in its own session, and every process of that session."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            # The group may outlive its leader (nanny children): make sure they are gone.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def cli_cluster(d: Path, workers: int):
    """`dask scheduler` + `workers` `dask worker` processes (one thread each, with nannies)
    on loopback; yields (address, scheduler process)."""
    import distributed

    sched_file = d / "scheduler.json"
    logs = []
    procs = []

    def start(name: str, args: list[str]) -> None:
        log = open(d / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=_env(),
                                      cwd=str(d), start_new_session=True))

    def tails() -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text()[-3000:]}" for p in d.glob("*.log"))

    try:
        start("scheduler", _dask_cli("scheduler", "--host", "127.0.0.1", "--port", "0",
                                     "--no-dashboard", "--scheduler-file", str(sched_file)))
        deadline = time.monotonic() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                pytest.fail("dask scheduler did not start:\n" + tails())
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(workers):
            start(f"worker{i}", _dask_cli("worker", address, "--nthreads", "1",
                                          "--nworkers", "1", "--host", "127.0.0.1",
                                          "--no-dashboard", "--memory-limit", "0",
                                          "--name", f"w{i}"))
        with distributed.Client(address, timeout=30, set_as_default=False) as client:
            try:
                client.wait_for_workers(workers, timeout=90)
            except Exception:
                pytest.fail("dask workers did not start:\n" + tails())
        yield address, procs[0]
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        for log in logs:
            log.close()


def wait_for_workers(address: str, n: int = 2, timeout: float = 60) -> None:
    """After a test that killed or restarted workers: wait until ``n`` are back."""
    import distributed

    with distributed.Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=timeout)
