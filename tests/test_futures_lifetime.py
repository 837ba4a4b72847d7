"""What becomes of a ProcessPoolExecutor nobody shuts down, and ``max_tasks_per_child`` per
start method (both as the stdlib's executor does; see docs/migrating.md)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
import weakref

import psutil
import pytest

import _pool_targets as t
import _stop_targets as st
import polyproc
import polyproc.futures as pf

T = 30.0
DEADLINE = 10.0  # for the dispatcher and workers of a collected executor to be gone


def _gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def _wait_all_gone(threads_before: set[threading.Thread], pids: list[int]) -> None:
    """Until DEADLINE: no thread started since ``threads_before`` and none of ``pids`` runs."""
    deadline = time.monotonic() + DEADLINE
    while True:
        threads = [th for th in threading.enumerate() if th not in threads_before]
        if not threads and _gone(pids):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{DEADLINE} s after the executor was collected: threads {threads}, "
                        f"workers still running {[p for p in pids if not _gone([p])]}")
        time.sleep(0.02)


@pytest.mark.timeout(60)
def test_collected_executor_stops_its_threads_and_workers(ctx, no_leaks: None) -> None:  # noqa: ANN001
    threads_before = set(threading.enumerate())
    ex = pf.ProcessPoolExecutor(2, mp_context=ctx)
    assert ex.submit(t.sq, 3).result(T) == 9
    pids = list(ex._processes)
    assert pids
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None
    _wait_all_gone(threads_before, pids)


@pytest.mark.timeout(60)
def test_collected_executor_finishes_its_work_without_blocking_the_collection(
        ctx, tmp_path, no_leaks: None) -> None:  # noqa: ANN001
    # As the stdlib's: the work submitted still runs to its end after the collection; the
    # collection itself does not wait for it (it may happen in any thread, at any moment).
    threads_before = set(threading.enumerate())
    gate = str(tmp_path / "gate")
    ex = pf.ProcessPoolExecutor(2, mp_context=ctx)
    futures = [ex.submit(st.wait_file, gate, T) for _ in range(3)]
    futures.append(ex.submit(t.sq, 4))
    pids = list(ex._processes)
    start = time.monotonic()
    del ex
    gc.collect()
    took = time.monotonic() - start
    open(gate, "w").close()
    assert took < 5.0, f"collecting the executor waited {took:.1f} s for its work"
    assert [f.result(T) for f in futures] == [True, True, True, 16]
    _wait_all_gone(threads_before, pids)


@pytest.mark.timeout(60)
def test_collected_executor_work_is_finished_at_exit(method: str, tmp_path) -> None:  # noqa: ANN001
    # Collected with a task still running, then the program ends: the task's result is
    # still produced (the process waits for the released executor at exit).
    out = tmp_path / "out"
    script = tmp_path / "prog.py"
    script.write_text(
        "import gc, sys\n"
        "import polyproc, polyproc.futures as pf\n"
        "import _stop_targets as st\n"
        "def done(f):\n"
        f"    open({str(out)!r}, 'w').write(repr(f.result()))\n"
        "if __name__ == '__main__':\n"
        f"    ex = pf.ProcessPoolExecutor(1, mp_context=polyproc.get_context({method!r}))\n"
        f"    f = ex.submit(st.touch, {str(tmp_path / 'ran')!r})\n"
        "    f.add_done_callback(done)\n"
        "    del ex\n"
        "    gc.collect()\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(__file__)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, str(script)], env=env, timeout=T,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == repr(str(tmp_path / "ran"))


# ---------------------------------------------------------------- max_tasks_per_child


def test_max_tasks_per_child_refuses_a_fork_context_like_the_stdlib() -> None:
    with pytest.raises(ValueError, match="incompatible with the 'fork' start method.*spawn"):
        pf.ProcessPoolExecutor(1, mp_context=polyproc.get_context("fork"),
                               max_tasks_per_child=3)
    with pytest.raises(ValueError, match="'fork'"):
        polyproc.get_context("fork").ProcessPoolExecutor(1, max_tasks_per_child=1)


def test_max_tasks_per_child_default_context_is_spawn_even_if_fork_is_the_default() -> None:
    ctx = polyproc.get_context()
    if ctx.get_start_method() != "fork":
        pytest.skip("the default start method is not fork here")
    with pf.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
        assert ex._mp_context.get_start_method() == "spawn"
        assert ex.submit(t.sq, 5).result(T) == 25


def test_pool_maxtasksperchild_under_fork_stays_allowed(no_leaks: None) -> None:
    # Pool(maxtasksperchild=) is allowed with fork in the stdlib too.
    with polyproc.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
        pids = [pool.apply(t.getpid) for _ in range(3)]
    assert len(set(pids)) == 3
