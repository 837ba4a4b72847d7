"""Stopping one running task (``future.terminate()``, ``AsyncResult.terminate()``, issue 13) and
Python 3.14's ``terminate_workers()``/``kill_workers()`` on every version (issue 11).

Under every start method: a task stuck in an endless loop, or in a worker stopped by SIGSTOP,
is stopped within a deadline and ends with ``CancelledError``; every other task (those packed
in the same batch included) gets exactly one, correct, outcome; the pool goes on with all its
workers; nothing hangs or leaks (``no_leaks``).
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

import _pool_targets as pt
import _stop_targets as st
import polyproc
import polyproc.futures as pf
from polyproc._engine.jobs import Job
from polyproc._engine.results import FutureSink, IMapUnorderedIterator
from polyproc._engine.scheduler import Scheduler

METHODS = ["fork", "spawn", "forkserver"]
T = 60.0  # bound on waits that only fail when something is broken
DEADLINE = 10.0  # a stopped task's outcome must arrive within this (measured: tens of ms)

pytestmark = pytest.mark.usefixtures("no_leaks")


def _wait_until(pred, timeout: float = T) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _pid_in(path: Path) -> int:
    """The pid a task wrote to ``path`` (waits for it)."""
    assert _wait_until(path.exists), f"the task never started (no {path})"
    return int(path.read_text())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def _start_victim(submit, how: str, path: Path):  # noqa: ANN001, ANN202
    """Submit the task to stop: an endless loop, or one whose worker SIGSTOPs itself."""
    return submit(st.spin if how == "spin" else st.stop_self, str(path))


def _running_victim(how: str, path: Path) -> int:
    pid = _pid_in(path)
    if how == "sigstop":
        assert _wait_until(lambda: _stopped(pid), DEADLINE), "the worker did not stop"
    return pid


def _batch_len(backend, job_id: int) -> int:  # noqa: ANN001
    """How many tasks share the batch that holds job ``job_id``'s task (0: none)."""
    with backend.scheduler.lock:
        for batch in backend.scheduler.batches.values():
            if any(batch.job_at(pos).id == job_id for pos in range(len(batch))):
                return len(batch)
    return 0


# ---------------------------------------------------------------- one running task


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["spin", "sigstop"])
def test_future_terminate_running(ctx, how: str, tmp_path: Path) -> None:  # noqa: ANN001
    with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert [ex.submit(pt.sq, i).result(T) for i in range(4)] == [0, 1, 4, 9]  # sq's cost
        gate = tmp_path / "gate"
        # Both workers wait at the gate, so what follows queues up and is packed into
        # batches (the victim among tiny tasks) when the gate opens.
        gates = [ex.submit(st.wait_file, str(gate)) for _ in range(2)]
        small = [ex.submit(pt.sq, i) for i in range(300)]
        victim = _start_victim(ex.submit, how, tmp_path / "pid")
        small += [ex.submit(pt.sq, i) for i in range(300, 600)]
        gate.touch()
        assert all(g.result(T) for g in gates)
        pid = _running_victim(how, tmp_path / "pid")
        packed = _batch_len(ex._backend, victim._stop[1])
        assert victim.running() and not victim.cancel()  # cancel() keeps the stdlib's meaning

        t0 = time.monotonic()
        assert victim.terminate() is True
        with pytest.raises(cf.CancelledError):
            victim.result(DEADLINE)
        elapsed = time.monotonic() - t0
        assert victim.cancelled() and victim.done() and not victim.running()
        with pytest.raises(cf.CancelledError):
            victim.exception(0)
        assert elapsed < DEADLINE
        assert _wait_until(lambda: not _alive(pid), DEADLINE), "the stopped worker lives on"
        assert victim.terminate() is True  # as cancel(): it is cancelled

        assert [f.result(T) for f in small] == [i * i for i in range(600)]
        # The pool goes on, with a replacement for the killed worker.
        assert ex.submit(pt.sq, 7).result(T) == 49
        assert _wait_until(lambda: len(ex._processes) == 2 and pid not in ex._processes)
        assert all(_alive(p) for p in ex._processes)
        assert list(ex.map(pt.sq, range(100))) == [i * i for i in range(100)]
    # The victim shared its batch with tiny tasks (re-run elsewhere): the case to cover.
    assert packed > 1, packed


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["spin", "sigstop"])
def test_async_result_terminate_running(ctx, how: str, tmp_path: Path) -> None:  # noqa: ANN001
    outcomes: dict[int, list] = {}
    lock = threading.Lock()

    def record(i):  # noqa: ANN001, ANN202
        def cb(value):  # noqa: ANN001, ANN202
            with lock:
                outcomes.setdefault(i, []).append(value)
        return cb

    pool = ctx.Pool(2)
    try:
        assert pool.map(pt.sq, range(8)) == [i * i for i in range(8)]
        gate = tmp_path / "gate"
        gates = [pool.apply_async(st.wait_file, (str(gate),)) for _ in range(2)]
        small = [pool.apply_async(pt.sq, (i,), callback=record(i), error_callback=record(i))
                 for i in range(300)]
        victim = _start_victim(
            lambda f, a: pool.apply_async(f, (a,), callback=record(-1), error_callback=record(-1)),
            how, tmp_path / "pid")
        small += [pool.apply_async(pt.sq, (i,), callback=record(i), error_callback=record(i))
                  for i in range(300, 600)]
        gate.touch()
        assert all(g.get(T) for g in gates)
        pid = _running_victim(how, tmp_path / "pid")

        t0 = time.monotonic()
        assert victim.terminate() is True
        with pytest.raises(cf.CancelledError):
            victim.get(DEADLINE)
        assert time.monotonic() - t0 < DEADLINE
        assert victim.ready() and not victim.successful()
        assert _wait_until(lambda: not _alive(pid), DEADLINE)
        assert victim.terminate() is False  # finished (cancelled)

        assert [r.get(T) for r in small] == [i * i for i in range(600)]
        assert pool.map(pt.sq, range(50)) == [i * i for i in range(50)]
        assert _wait_until(lambda: len(pool._backend.worker_pids()) == 2)
        assert pid not in pool._backend.worker_pids()
        pool.close()
        pool.join()
    finally:
        pool.terminate()
    # Exactly one outcome per task: the callbacks ran once each.
    assert sorted(outcomes) == [-1, *range(600)]
    assert all(len(v) == 1 for v in outcomes.values()), {k: v for k, v in outcomes.items()
                                                         if len(v) != 1}
    assert isinstance(outcomes[-1][0], cf.CancelledError)
    assert all(outcomes[i] == [i * i] for i in range(600))


@pytest.mark.timeout(120)
def test_map_async_terminate(ctx, tmp_path: Path) -> None:  # noqa: ANN001
    with ctx.Pool(2) as pool:
        path = tmp_path / "pid"
        result = pool.map_async(functools.partial(st.spin_at, at=40, path=str(path)),
                                range(200), chunksize=4)
        others = [pool.apply_async(pt.sq, (i,)) for i in range(50)]
        pid = _pid_in(path)
        assert result.terminate() is True
        with pytest.raises(cf.CancelledError):
            result.get(DEADLINE)
        assert [r.get(T) for r in others] == [i * i for i in range(50)]
        assert _wait_until(lambda: not _alive(pid), DEADLINE)
        # True while its tasks on workers are being stopped; then nothing of it is left.
        assert _wait_until(lambda: result.terminate() is False, DEADLINE)
        assert pool.map(pt.sq, range(100)) == [i * i for i in range(100)]
        assert _wait_until(lambda: len(pool._backend.worker_pids()) == 2)


@pytest.mark.timeout(120)
def test_imap_terminate(ctx, tmp_path: Path) -> None:  # noqa: ANN001
    with ctx.Pool(2) as pool:
        path = tmp_path / "pid"
        it = pool.imap(functools.partial(st.spin_at, at=3, path=str(path)), range(10),
                       chunksize=1)
        assert [it.next(T) for _ in range(3)] == [0, 1, 4]
        pid = _pid_in(path)
        assert it.terminate() is True
        rest = []
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                rest.append(it.next(max(0.0, deadline - time.monotonic())))
            except StopIteration:
                break
            except cf.CancelledError as e:
                rest.append(e)
        # The stopped task is cancelled, and so is every later one not finished before
        # terminate() (those that had finished keep their values); the input is read no
        # further (one more outcome says so, if some was left).
        assert rest and isinstance(rest[0], cf.CancelledError), rest
        assert all(isinstance(e, cf.CancelledError) or e == (3 + k) ** 2
                   for k, e in enumerate(rest)), rest
        assert len(rest) <= 7, rest
        assert _wait_until(lambda: it.terminate() is False, DEADLINE)
        assert _wait_until(lambda: not _alive(pid), DEADLINE)
        assert sorted(pool.imap_unordered(pt.sq, range(20))) == [i * i for i in range(20)]


# ---------------------------------------------------------------- not started, finished


@pytest.mark.timeout(60)
def test_terminate_queued_task_never_runs(ctx, tmp_path: Path) -> None:  # noqa: ANN001
    trace = tmp_path / "ran"
    with pf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        busy = ex.submit(st.spin, str(tmp_path / "pid"))
        pid = _pid_in(tmp_path / "pid")
        queued = ex.submit(st.touch, str(trace))
        assert not queued.running()
        assert queued.terminate() is True
        assert queued.cancelled()  # at once: it was only queued
        assert busy.terminate() is True
        with pytest.raises(cf.CancelledError):
            busy.result(DEADLINE)
        assert ex.submit(pt.sq, 3).result(T) == 9
        assert _wait_until(lambda: not _alive(pid), DEADLINE)
    with ctx.Pool(1) as pool:
        busy = pool.apply_async(st.spin, (str(tmp_path / "pid2"),))
        _pid_in(tmp_path / "pid2")
        queued = pool.apply_async(st.touch, (str(trace),))
        assert queued.terminate() is True
        with pytest.raises(cf.CancelledError):
            queued.get(0)  # at once
        assert busy.terminate() is True
        assert pool.apply(pt.sq, (4,)) == 16
    assert not trace.exists(), "a task cancelled before it started ran anyway"


def test_terminate_finished_returns_false() -> None:
    ctx = polyproc.get_context("fork")
    with pf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        f = ex.submit(pt.sq, 3)
        assert f.result(T) == 9
        assert f.terminate() is False and f.result() == 9 and not f.cancelled()
        e = ex.submit(pt.fail_on, 3)
        assert isinstance(e.exception(T), ValueError)
        assert e.terminate() is False
    with ctx.Pool(1) as pool:
        r = pool.apply_async(pt.sq, (5,))
        assert r.get(T) == 25
        assert r.terminate() is False and r.get() == 25
        m = pool.map_async(pt.sq, range(10))
        assert m.get(T) == [i * i for i in range(10)]
        assert m.terminate() is False


def test_thread_pool_cannot_terminate() -> None:
    with polyproc.ThreadPool(1) as pool:
        r = pool.apply_async(pt.sq, (3,))
        with pytest.raises(NotImplementedError, match="ThreadPool cannot stop"):
            r.terminate()
        assert r.get(T) == 9
        it = pool.imap(pt.sq, range(3))
        with pytest.raises(NotImplementedError, match="process Pool"):
            it.terminate()
        assert list(it) == [0, 1, 4]


def test_dask_backend_cannot_terminate() -> None:
    pytest.importorskip("distributed")
    from polyproc._backends.dask import DaskBackend

    with pytest.raises(NotImplementedError, match="task_timeout.*Client.cancel"):
        DaskBackend.stop_job(object(), 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the scheduler alone


def _single_jobs(sched: Scheduler, n: int, retries: int = 0) -> tuple[list[Job], list]:
    futures = [pf._Future() for _ in range(n)]
    jobs = [Job("submit", pt.sq, (i,), FutureSink(f), length=1, star=True, single=True,
                retries=retries) for i, f in enumerate(futures)]
    for job in jobs:
        sched.submit(job)
    sched._func_cost[jobs[0].fid] = 1000.0  # a tiny function: singles are packed
    return jobs, futures


def test_scheduler_stop_in_a_packed_batch() -> None:
    sched = Scheduler(1, lambda: None)
    jobs, futures = _single_jobs(sched, 6)
    batch = sched.next_batch("w")
    assert batch is not None and len(batch) == 6
    victim = jobs[2]
    assert sched.stop_job(victim.id) is True and sched.stopping == [victim]
    assert sched.stop_job(victim.id) is True  # being stopped already
    assert futures[2].running()  # not before its worker is gone
    # Killed while running task 1, not the victim (it had moved on): nobody is to blame.
    sched.worker_lost([batch], (batch.id, 1), 123, -9, stopped=True)
    assert futures[2].cancelled()
    assert not any(f.done() for i, f in enumerate(futures) if i != 2)
    again = sched.next_batch("w2")
    assert again is not None and sorted(again.items) == sorted(
        (jobs[0].fid, (i,), {}) for i in (0, 1, 3, 4, 5))
    sched.complete(again.id, [pos * 0 + item[1][0] ** 2 for pos, item in enumerate(again.items)],
                   None, 1000)
    assert [f.result(0) for i, f in enumerate(futures) if i != 2] == [0, 1, 9, 16, 25]
    assert sched.idle() and sched.stop_job(victim.id) is False


def test_scheduler_stop_queued_and_completed() -> None:
    sched = Scheduler(1, lambda: None)
    jobs, futures = _single_jobs(sched, 3)
    assert sched.stop_job(jobs[1].id) is True  # still queued: cancelled now
    assert futures[1].cancelled() and not sched.stopping
    batch = sched.next_batch("w")
    assert [item[1] for item in batch.items] == [(0,), (2,)]
    assert sched.stop_job(jobs[2].id) is True
    # Its batch completes before the worker was stopped: terminate() still wins.
    sched.complete(batch.id, [0, 4], None, 1000)
    assert futures[0].result(0) == 0 and futures[2].cancelled()
    assert sched.idle()


def test_scheduler_stop_map_job() -> None:
    sched = Scheduler(2, lambda: None)
    sink = IMapUnorderedIterator()
    job = Job("imap_unordered", pt.sq, range(100), sink, chunksize=10)
    sched.submit(job)
    first = sched.next_batch("a")
    assert sched.stop_job(job.id) is True
    assert sched.next_batch("b") is None  # nothing more of it is sent
    sched.worker_lost([first], (first.id, -1), 1, -9, stopped=True)
    outcomes = []
    while True:
        try:
            outcomes.append(sink.next(0))
        except StopIteration:
            break
        except cf.CancelledError as e:
            outcomes.append(e)
    assert outcomes and all(isinstance(e, cf.CancelledError) for e in outcomes)
    assert sched.idle()


# ---------------------------------------------------------------- terminate_workers / kill_workers


def _new_children(before: set[int]) -> list[int]:
    found = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in before:
            continue
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["terminate_workers", "kill_workers"])
def test_terminate_kill_workers(ctx, which: str, tmp_path: Path) -> None:  # noqa: ANN001
    ex = pf.ProcessPoolExecutor(2, mp_context=ctx)
    running = [ex.submit(st.spin, str(tmp_path / f"pid{i}")) for i in range(2)]
    pids = [_pid_in(tmp_path / f"pid{i}") for i in range(2)]
    assert sorted(pids) == sorted(ex._processes)
    os.kill(pids[1], signal.SIGSTOP)  # a stopped worker must go too (SIGTERM alone waits)
    assert _wait_until(lambda: _stopped(pids[1]), DEADLINE)
    queued = [ex.submit(pt.sq, i) for i in range(5)]
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    t0 = time.monotonic()
    getattr(ex, which)()
    for f in running:
        err = f.exception(DEADLINE)
        assert isinstance(err, pf.BrokenProcessPool) and isinstance(err, cf.BrokenExecutor), err
        assert which in str(err)
    assert all(f.cancelled() for f in queued)
    assert time.monotonic() - t0 < DEADLINE
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pt.sq, 1)
    assert _wait_until(lambda: not any(_alive(p) for p in pids), DEADLINE)
    assert time.monotonic() - t0 < DEADLINE
    t1 = time.monotonic()
    ex.shutdown()  # waits for nothing more
    assert time.monotonic() - t1 < DEADLINE
    assert ex._processes == {}
    assert _new_children(before) == [], "a replacement worker was started"
    getattr(ex, which)()  # again: nothing left to do


@pytest.mark.timeout(60)
def test_context_manager_exit_after_terminate_workers(ctx, tmp_path: Path) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        stuck = ex.submit(st.spin, str(tmp_path / "pid"))
        pid = _pid_in(tmp_path / "pid")
        t1 = time.monotonic()
        ex.terminate_workers()
    assert time.monotonic() - t1 < DEADLINE
    assert isinstance(stuck.exception(0), pf.WorkerLostError)
    assert not _alive(pid)
    assert time.monotonic() - t0 < T
    with pf.ProcessPoolExecutor(1, mp_context=ctx) as ex:  # never used: nothing to stop
        ex.kill_workers()
    with pytest.raises(RuntimeError):
        ex.submit(pt.sq, 1)


@pytest.mark.timeout(60)
def test_shutdown_cancel_futures_with_a_stuck_task(ctx, tmp_path: Path) -> None:  # noqa: ANN001
    ex = pf.ProcessPoolExecutor(1, mp_context=ctx)
    stuck = ex.submit(st.spin, str(tmp_path / "pid"))
    pid = _pid_in(tmp_path / "pid")
    queued = [ex.submit(pt.sq, i) for i in range(5)]
    t0 = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)  # returns while the task still runs
    assert time.monotonic() - t0 < DEADLINE
    assert all(f.cancelled() for f in queued) and stuck.running()
    assert stuck.terminate() is True  # stopping it lets the executor finish
    with pytest.raises(cf.CancelledError):
        stuck.result(DEADLINE)
    t1 = time.monotonic()
    ex.shutdown(cancel_futures=True)
    assert time.monotonic() - t1 < DEADLINE
    assert not _alive(pid) and ex._processes == {}

    ex = pf.ProcessPoolExecutor(1, mp_context=ctx)
    stuck = ex.submit(st.spin, str(tmp_path / "pid2"))
    _pid_in(tmp_path / "pid2")
    queued = [ex.submit(pt.sq, i) for i in range(5)]
    assert stuck.terminate() is True
    t1 = time.monotonic()
    ex.shutdown(cancel_futures=True)  # the queued ones may run on the replacement first
    assert time.monotonic() - t1 < DEADLINE
    assert stuck.cancelled()
    assert all(f.cancelled() or f.result(0) == i * i for i, f in enumerate(queued))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["spin", "sigstop"])
def test_pool_terminate_with_a_stuck_task(ctx, how: str, tmp_path: Path) -> None:  # noqa: ANN001
    pool = ctx.Pool(2)
    stuck = _start_victim(lambda f, a: pool.apply_async(f, (a,)), how, tmp_path / "pid")
    pid = _running_victim(how, tmp_path / "pid")
    queued = [pool.apply_async(pt.sleep_for, (30,)) for _ in range(3)]
    t0 = time.monotonic()
    pool.terminate()
    pool.join()
    # Promptly, a SIGSTOPped worker too (it is sent SIGCONT after SIGTERM: no 5 s wait).
    assert time.monotonic() - t0 < 4.0
    with pytest.raises(cf.CancelledError):
        stuck.get(0)
    assert all(r.ready() and not r.successful() for r in queued)
    assert _wait_until(lambda: not _alive(pid), DEADLINE)
