"""One fault suite, every backend (#14): the same bodies run on process pools under each start
method, on the thread pool where the fault applies to threads, and on a Dask cluster.

A fault that needs processes (a worker killed, a task overrunning its timeout, a result that
must be pickled) skips on threads, saying why. Every wait is bounded; a Dask test that killed
workers waits for the cluster to have them back. Backend-specific faults stay in their own
files (tests/test_pool_faults.py, tests/test_dask.py).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import _backend_fault_targets as ft
import polyproc
from _dask_cluster import HAVE_DISTRIBUTED, cli_cluster, wait_for_workers
from polyproc.pool import ThreadPool

pytestmark = pytest.mark.timeout(180)

T = 60.0  # bound on every wait for a result
BACKENDS = ["fork", "spawn", "forkserver", "threads", "dask"]


@dataclass
class Backend:
    name: str
    pool: Callable[..., Any]  # Pool(**options) of this backend
    processes: bool  # its workers are processes (they can be killed, results are pickled)
    settle: Callable[[], None]  # after a test that killed workers: wait until they are back

    def needs_processes(self, why: str) -> None:
        if not self.processes:
            pytest.skip(f"threads: {why}")


@pytest.fixture(scope="module")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not HAVE_DISTRIBUTED:
        pytest.skip("dask.distributed is not installed: pip install 'polyproc[dask]'")
    with cli_cluster(tmp_path_factory.mktemp("faults-dask"), 2) as (address, _):
        yield address


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    name = request.param
    if name == "threads":
        return Backend(name, lambda **kw: ThreadPool(2), False, lambda: None)
    if name == "dask":
        address = request.getfixturevalue("dask_address")
        ctx = polyproc.get_context("dask", address=address)
        return Backend(name, lambda **kw: ctx.Pool(**kw), True,
                       lambda: wait_for_workers(address))
    ctx = polyproc.get_context(name)
    return Backend(name, lambda **kw: ctx.Pool(2, **kw), True, lambda: None)


def outcome(fn: Callable[[], Any]) -> tuple:
    try:
        return ("ok", fn())
    except Exception as e:
        return ("raised", type(e).__name__, str(e))


def _wait_for_pid(path: Path) -> int:
    deadline = time.monotonic() + T
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"the task never started (no {path})"
        time.sleep(0.02)
    return int(path.read_text())


def test_task_exception_reaches_its_task_only(backend: Backend) -> None:
    with backend.pool() as pool:
        outcomes = [outcome(lambda r=r: r.get(T))
                    for r in [pool.apply_async(ft.fail_on_3, (i,)) for i in range(6)]]
        assert outcomes == [("ok", 0), ("ok", 1), ("ok", 2),
                            ("raised", "ValueError", "bad value 3"), ("ok", 4), ("ok", 5)]
        it = pool.imap(ft.fail_on_3, range(6), 2)
        assert [outcome(lambda: it.next(T)) for _ in range(6)] == outcomes
        assert pool.map(ft.sq, range(5)) == [0, 1, 4, 9, 16]


def test_sys_exit_in_a_task_is_its_outcome(backend: Backend) -> None:
    with backend.pool() as pool:
        with pytest.raises(SystemExit) as info:
            pool.apply(ft.exits, (3,))
        assert info.value.args == (3,)
        assert pool.apply(ft.sq, (3,)) == 9


def test_unpicklable_result_fails_alone(backend: Backend) -> None:
    backend.needs_processes("results are not pickled")
    with backend.pool() as pool:
        outcomes = [outcome(lambda r=r: r.get(T)) for r in
                    [pool.apply_async(ft.unpicklable_on_5, (i,)) for i in range(8)]]
        assert [o for i, o in enumerate(outcomes) if i != 5] == \
            [("ok", i) for i in range(8) if i != 5]
        assert outcomes[5][0] == "raised" and "pickle" in outcomes[5][2].lower()
        assert pool.map(ft.sq, range(4)) == [0, 1, 4, 9]


def test_worker_killed_mid_task_is_retried(backend: Backend, tmp_path: Path) -> None:
    backend.needs_processes("a thread cannot be killed")
    marker = tmp_path / "pid"
    with backend.pool(retries=1) as pool:
        r = pool.apply_async(ft.pid_then_sleep, (str(marker), 60))
        others = pool.map_async(ft.sq, range(20))
        os.kill(_wait_for_pid(marker), signal.SIGKILL)
        t0 = time.monotonic()
        assert r.get(T) == "second attempt"
        assert others.get(T) == [x * x for x in range(20)]
        assert time.monotonic() - t0 < 30
    backend.settle()


def test_worker_killed_without_retries_fails_that_task(backend: Backend, tmp_path: Path) -> None:
    backend.needs_processes("a thread cannot be killed")
    marker = tmp_path / "pid"
    with backend.pool() as pool:
        r = pool.apply_async(ft.pid_then_sleep, (str(marker), 60))
        pid = _wait_for_pid(marker)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(polyproc.WorkerLostError, match=f"worker pid {pid} "):
            r.get(T)
        assert pool.map(ft.sq, range(5)) == [0, 1, 4, 9, 16]
    backend.settle()


def test_crash_in_a_batch_blames_only_the_culprit(backend: Backend) -> None:
    backend.needs_processes("a crash would end the test process")
    with backend.pool() as pool:
        it = pool.imap(ft.die_on_7, range(24), 8)  # task 7 shares a batch with 0..6
        outcomes = [outcome(lambda: it.next(T)) for _ in range(24)]
        assert [o for i, o in enumerate(outcomes) if i != 7] == \
            [("ok", i * 10) for i in range(24) if i != 7]
        assert outcomes[7][:2] == ("raised", "WorkerLostError")
        assert "task 7 of imap()" in outcomes[7][2]
    backend.settle()


def test_task_timeout_stops_that_task(backend: Backend) -> None:
    backend.needs_processes("a running thread cannot be stopped (ThreadPool refuses timeout=)")
    t0 = time.monotonic()
    with backend.pool() as pool:
        with pytest.raises(polyproc.TaskTimeoutError, match="timeout of 1"):
            pool.apply_async(ft.sleep_for, (60,), timeout=1).get(T)
        it = pool.imap(ft.sleep_if_3, range(6), 1, timeout=1)
        outcomes = [outcome(lambda: it.next(T)) for _ in range(6)]
        assert [o[1] for o in outcomes[:3] + outcomes[4:]] == [0, 1, 2, 4, 5]
        assert outcomes[3][1] == "TaskTimeoutError"
        backend.settle()
        assert pool.map(ft.sq, range(4)) == [0, 1, 4, 9]
    assert time.monotonic() - t0 < 60


def test_terminate_gives_every_task_an_outcome(backend: Backend) -> None:
    pool = backend.pool()
    r = pool.map_async(ft.sleep_for, [2] * 6, 1)
    time.sleep(0.5)  # let the first tasks start: terminate() must stop running ones too
    t0 = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - t0 < 20
    with pytest.raises(concurrent.futures.CancelledError):
        r.get(T)
