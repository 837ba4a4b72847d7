"""Pools and executors behave as the stdlib's where CPython's own test suites look (issue #11).

The executor starts its workers as work needs them, within ``submit()``, and reuses idle ones
(fork: all at first use, as the stdlib); ``shutdown(cancel_futures=True)`` lets the tasks already handed to a
worker finish; ``Pool`` makes its workers with its context's ``Process`` and stops those it
started when one fails; a result that cannot be pickled is a ``MaybeEncodingError`` for
``Pool``; a ``SystemExit`` raised while pickling a result is that task's outcome; an
unclosed pool's ResourceWarning reads as the stdlib's.
"""

from __future__ import annotations

import gc
import os
import pickle
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

import _pool_targets as t
import _resilience_targets as rt
import polyproc
import polyproc.futures as pf
import polyproc.pool
from polyproc._engine.errors import UnpicklableError

METHODS = ["fork", "spawn", "forkserver"]
T = 30.0

pytestmark = pytest.mark.timeout(120)


def wait_until(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# ---------------------------------------------------------------- workers on demand


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_executor_starts_workers_as_work_needs_them(method: str, tmp_path: Path,
                                                     no_leaks: None) -> None:
    started, gate = tmp_path / "started", tmp_path / "gate"
    started.mkdir()
    with pf.ProcessPoolExecutor(5, mp_context=polyproc.get_context(method)) as ex:
        assert ex._processes == {}  # nothing before the first task
        for i in range(3):  # one task at a time: the idle worker is reused
            assert ex.submit(t.sq, i).result(T) == i * i
        assert len(ex._processes) == 1
        ex.submit(t.sq, 5).result(T)
        first = set(ex._processes)
        # Three tasks that run until the gate opens: each needs a worker of its own, started
        # by the time submit() returns (as the stdlib's submit starts it).
        gated = [ex.submit(rt.gated, str(started), str(gate), i) for i in range(3)]
        assert len(ex._processes) == 3 and first <= set(ex._processes)
        wait_until(lambda: len(rt.started(str(started))) == 3, T, "3 tasks to run")
        # More tasks than workers: never more than max_workers.
        gated += [ex.submit(rt.gated, str(started), str(gate), i) for i in range(3, 12)]
        assert len(ex._processes) == 5
        wait_until(lambda: len(rt.started(str(started))) == 5, T, "5 tasks to run")
        assert len(ex._processes) == 5
        gate.touch()
        results = [f.result(T) for f in gated]
        assert [v for v, _ in results] == [i * 10 for i in range(12)]
        assert {pid for _, pid in results} == set(ex._processes)
        assert len(ex._processes) == 5


def test_executor_under_fork_starts_every_worker_at_first_use(no_leaks: None) -> None:
    # As the stdlib's: forking later would fork a process with threads (the dispatcher).
    with pf.ProcessPoolExecutor(3, mp_context=polyproc.get_context("fork")) as ex:
        assert ex._processes == {}
        assert ex.submit(t.sq, 2).result(T) == 4
        assert len(ex._processes) == 3


@pytest.mark.parametrize("method", METHODS)
def test_pool_starts_every_worker_at_once(method: str) -> None:
    with polyproc.get_context(method).Pool(3) as pool:
        assert len(pool._backend.worker_pids()) == 3


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_on_demand_workers_replace_one_that_died(method: str, no_leaks: None) -> None:
    ctx = polyproc.get_context(method)
    with pf.ProcessPoolExecutor(3, mp_context=ctx, max_tasks_per_child=2) as ex:
        pids = [ex.submit(t.getpid).result(T) for _ in range(6)]
        assert len(set(pids)) == 3  # a new worker after every 2 tasks
        assert len(ex._processes) <= 3
        assert sorted(ex.map(t.sq, range(50))) == [x * x for x in range(50)]
        assert len(ex._processes) <= 3


# ---------------------------------------------------------------- shutdown(cancel_futures)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("wait", [True, False])
def test_cancel_futures_lets_tasks_handed_to_workers_finish(method: str, wait: bool,
                                                            no_leaks: None) -> None:
    # CPython's test_cancel_futures: 50 submits, then shutdown at once. The tasks each worker
    # got (as the stdlib moves some to its call queue) run; the rest are cancelled, and that
    # is decided when shutdown returns, even with wait=False.
    ex = pf.ProcessPoolExecutor(5, mp_context=polyproc.get_context(method))
    fs = [ex.submit(t.sleep_for, 0.1) for _ in range(50)]
    ex.shutdown(wait=wait, cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    assert len(cancelled) > 20
    assert 1 <= len(others) <= 10  # at most 2 batches (of one task) per worker
    assert all(f.result(T) == 0.1 for f in others)
    assert ex._backend.join(T)


# ---------------------------------------------------------------- Pool(context=)


def test_pool_makes_workers_with_the_contexts_process_and_stops_them_if_one_fails() -> None:
    # CPython's TestPoolNotLeakOnFailure: any context object; its Process's 4th start fails.
    made: list = []

    class FailingProcess:
        fail_in = 3

        def __init__(self, **kwargs: object) -> None:
            self.state: str | None = None
            self.exitcode = None
            made.append(self)

        def start(self) -> None:
            if FailingProcess.fail_in <= 0:
                raise OSError("Manually induced OSError")
            FailingProcess.fail_in -= 1
            self.state = "started"

        def terminate(self) -> None:
            self.state = "stopping"

        def join(self) -> None:
            if self.state == "stopping":
                self.state = "stopped"

    with pytest.raises(OSError, match="Manually induced OSError"):
        polyproc.pool.Pool(5, context=mock.MagicMock(Process=FailingProcess))
    assert [p.state for p in made] == ["stopped"] * 3 + [None]


class CountingProcess(polyproc.context.SpawnProcess):
    starts = 0

    def start(self) -> None:
        CountingProcess.starts += 1
        super().start()


class CountingContext(polyproc.context.SpawnContext):
    Process = CountingProcess


def test_pool_workers_are_made_by_its_contexts_process_class(no_leaks: None) -> None:
    CountingProcess.starts = 0
    with polyproc.pool.Pool(2, context=CountingContext()) as pool:
        assert pool.map(t.sq, range(10)) == [x * x for x in range(10)]
        assert CountingProcess.starts == 2


# ---------------------------------------------------------------- results that can't be sent


@pytest.mark.parametrize("method", METHODS)
def test_pool_result_that_cannot_be_pickled_is_a_maybe_encoding_error(method: str) -> None:
    from polyproc.pool import MaybeEncodingError

    with polyproc.get_context(method).Pool(2) as pool:
        pids = set(pool._backend.worker_pids())
        for _ in range(5):  # no worker is lost to it
            seen: list = []
            r = pool.apply_async(t.return_unpicklable, error_callback=seen.append)
            with pytest.raises(MaybeEncodingError, match="cannot be pickled") as info:
                r.get(T)
            err = info.value
            assert isinstance(err, UnpicklableError) and isinstance(err, pickle.PicklingError)
            assert "lock" in err.value and err.exc
            wait_until(lambda: seen, T, "the error callback")  # noqa: B023
            assert isinstance(seen[0], MaybeEncodingError)
        # An exception that cannot be pickled, likewise (the stdlib wraps it the same way).
        with pytest.raises(MaybeEncodingError) as info:
            pool.apply(t.raise_unpicklable)
        assert "UnpicklableError" in info.value.value
        # An argument that cannot be pickled never reached a worker: not this class.
        with pytest.raises(Exception) as arg:  # noqa: PT011
            pool.apply(t.identity, (threading.Lock(),))
        assert not isinstance(arg.value, MaybeEncodingError)
        assert set(pool._backend.worker_pids()) == pids
    with pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context(method)) as ex:
        assert isinstance(ex.submit(t.return_unpicklable).exception(T), pickle.PicklingError)


@pytest.mark.parametrize("method", METHODS)
def test_system_exit_while_pickling_a_result_is_its_outcome(method: str) -> None:
    # CPython's test_exit_during_result_pickle_on_worker: the future raises the SystemExit.
    ctx = polyproc.get_context(method)
    with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        with pytest.raises(SystemExit) as info:
            ex.submit(t.return_exit_at_pickle).result(T)
        # args, not .code: once distributed is imported (another test), tblib's exception
        # reducers rebuild a SystemExit without calling __init__, so .code is None.
        assert info.value.args == (3,)
        assert any("while pickling the result" in n for n in info.value.__notes__)
        assert ex.submit(t.sq, 3).result(T) == 9
    with ctx.Pool(1) as pool:
        pid = pool.apply(os.getpid)
        with pytest.raises(SystemExit):
            pool.apply(t.return_exit_at_pickle)
        assert pool.apply(os.getpid) == pid  # the worker lives on


# ---------------------------------------------------------------- ResourceWarning


@pytest.mark.parametrize("factory", [polyproc.Pool, polyproc.pool.ThreadPool],
                         ids=["Pool", "ThreadPool"])
def test_unclosed_pool_warning_reads_as_the_stdlibs(factory) -> None:  # noqa: ANN001
    # CPython's test_resource_warning looks for this text.
    pool = factory(1)
    pool.terminate()
    pool.join()
    pool._state = polyproc.pool.RUN  # as the stdlib's test does: __del__ then warns
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        pool = None
        gc.collect()
