"""polyproc.futures.ProcessPoolExecutor: concurrent.futures' API under every start method."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
import time

import pytest

import _pool_targets as t
import polyproc
import polyproc.futures as pf
from polyproc._engine.errors import RemoteTraceback

METHODS = ["fork", "spawn", "forkserver"]
T = 30.0


@pytest.fixture(scope="module", params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def ex(method: str):  # noqa: ANN201
    e = pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context(method))
    yield e
    e.shutdown(wait=True, cancel_futures=True)


def test_reexported_names() -> None:
    for name in ("FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED", "CancelledError",
                 "TimeoutError", "BrokenExecutor", "InvalidStateError", "Future", "Executor",
                 "wait", "as_completed", "ThreadPoolExecutor"):
        assert getattr(pf, name) is getattr(cf, name), name
    assert polyproc.ProcessPoolExecutor is pf.ProcessPoolExecutor
    assert issubclass(pf.ProcessPoolExecutor, cf.Executor)
    assert issubclass(pf.BrokenProcessPool, cf.BrokenExecutor)
    assert issubclass(pf.WorkerLostError, cf.BrokenExecutor)
    assert issubclass(pf.TaskTimeoutError, TimeoutError)
    assert set(pf.__all__) <= set(dir(pf))
    with pf.ThreadPoolExecutor(1) as tex:
        assert tex.submit(t.sq, 3).result(T) == 9


def test_context_method_makes_executor() -> None:
    ex = polyproc.get_context("fork").ProcessPoolExecutor(1)
    try:
        assert ex.submit(t.sq, 4).result(T) == 16
        assert ex._mp_context.get_start_method() == "fork"
    finally:
        ex.shutdown()


def test_submit(ex) -> None:  # noqa: ANN001
    f = ex.submit(t.add3, 1, 2, c=3)
    assert isinstance(f, cf.Future)
    assert f.result(T) == 6
    assert f.done() and not f.cancelled() and f.exception() is None
    got: list = []
    f = ex.submit(t.sq, 5)
    f.add_done_callback(got.append)
    assert f.result(T) == 25
    deadline = time.monotonic() + T
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [f]


def test_result_timeout(ex) -> None:  # noqa: ANN001
    f = ex.submit(t.sleep_for, 0.4)
    t0 = time.monotonic()
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.05)
    assert time.monotonic() - t0 < 0.35
    assert f.result(T) == 0.4


def test_wait_and_as_completed(ex) -> None:  # noqa: ANN001
    slow = ex.submit(t.sleep_for, 0.6)
    fast = ex.submit(t.sq, 3)
    done, not_done = cf.wait([slow, fast], timeout=T, return_when=cf.FIRST_COMPLETED)
    assert fast in done and slow in not_done
    failing = ex.submit(t.raise_key)
    done, _ = cf.wait([slow, failing], timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert failing in done
    done, not_done = cf.wait([slow, fast, failing], timeout=T, return_when=cf.ALL_COMPLETED)
    assert not not_done
    futures = [ex.submit(t.sleep_sq, i, 0.01 * (5 - i)) for i in range(5)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=T)) == [0, 1, 4, 9, 16]
    # the re-exported functions are the stdlib's
    assert sorted(f.result() for f in pf.as_completed(futures, timeout=T)) == [0, 1, 4, 9, 16]


def test_futures_are_futures_and_wake_every_waiter(ex) -> None:  # noqa: ANN001
    # The executor's futures make their condition's waiting machinery only on a first wait:
    # several threads blocked in result(), done callbacks and cancel() all behave as usual.
    f = ex.submit(t.sleep_for, 0.3)
    assert isinstance(f, cf.Future) and repr(f).startswith("<Future at ")
    called = threading.Event()
    f.add_done_callback(lambda fut: called.set())
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(f.result(T))) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(T)
    assert got == [0.3] * 4 and called.wait(T) and f.done() and not f.cancel()
    with pytest.raises(cf.TimeoutError):
        ex.submit(t.sleep_for, 0.5).result(timeout=0.05)


def test_cancelled_futures_count_as_done(ex) -> None:  # noqa: ANN001
    # Futures cancelled while queued must reach CANCELLED_AND_NOTIFIED when the executor
    # skips them, or wait() and as_completed() never see them done.
    busy = [ex.submit(t.sleep_for, 0.3) for _ in range(2)]
    queued = [ex.submit(t.sq, i) for i in range(5)]
    assert all(f.cancel() for f in queued)
    done, not_done = cf.wait(queued, timeout=T)
    assert len(done) == 5 and not not_done
    assert sorted(f.cancelled() for f in cf.as_completed(queued, timeout=T)) == [True] * 5
    assert [f.result(T) for f in busy] == [0.3, 0.3]


def test_asyncio_wrap_future(ex) -> None:  # noqa: ANN001
    async def main() -> list:
        loop = asyncio.get_running_loop()
        direct = await asyncio.wait_for(asyncio.wrap_future(ex.submit(t.sq, 6)), T)
        via_loop = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(ex, t.add, i, i) for i in range(3))), T)
        return [direct, via_loop]

    assert asyncio.run(main()) == [36, [0, 2, 4]]


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_map(ex, chunksize) -> None:  # noqa: ANN001
    kw = {} if chunksize is None else {"chunksize": chunksize}
    assert list(ex.map(t.sq, range(20), **kw)) == [x * x for x in range(20)]
    assert list(ex.map(t.add, range(5), range(10, 20), **kw)) == [10, 12, 14, 16, 18]
    assert list(ex.map(t.add3, [1, 2], [3, 4], [5, 6], **kw)) == [9, 12]
    assert list(ex.map(t.sq, [], **kw)) == []
    assert list(ex.map(t.sq, (x for x in range(4)), timeout=T, **kw)) == [0, 1, 4, 9]


def test_map_errors(ex) -> None:  # noqa: ANN001
    it = ex.map(t.fail_on, range(6), chunksize=2)
    assert next(it) == 0 and next(it) == 10 and next(it) == 20
    with pytest.raises(ValueError, match="bad value 3") as info:
        next(it)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    with pytest.raises(ValueError):
        ex.map(t.sq, [1], chunksize=0)


def test_map_timeout(ex) -> None:  # noqa: ANN001
    t0 = time.monotonic()
    it = ex.map(t.sleep_for, [0.01, 0.8], timeout=0.3)
    assert next(it) == 0.01
    with pytest.raises(cf.TimeoutError):
        next(it)
    assert time.monotonic() - t0 < 1.5


def test_lambdas_and_closures(ex) -> None:  # noqa: ANN001
    base = 7

    def closure(x: int) -> int:
        return x * base

    assert ex.submit(lambda: "hi").result(T) == "hi"
    assert ex.submit(closure, 3).result(T) == 21
    assert list(ex.map(lambda a, b: a - b, [5, 6], [1, 1])) == [4, 5]
    assert list(ex.map(closure, range(3))) == [0, 7, 14]


def test_exception_cause_and_note(ex) -> None:  # noqa: ANN001
    f = ex.submit(t.fail_deep, 5)
    exc = f.exception(T)
    assert isinstance(exc, ZeroDivisionError)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "_deep_helper_in_worker" in str(exc.__cause__)
    (note,) = exc.__notes__
    assert "task 0 of submit()" in note
    pid = int(note.rsplit("worker pid ", 1)[1].rstrip(")"))
    assert pid in ex._processes
    with pytest.raises(ZeroDivisionError):
        f.result()


def test_progress(ex, capsys) -> None:  # noqa: ANN001
    pytest.importorskip("tqdm")
    assert list(ex.map(t.sq, range(8), progress=True)) == [x * x for x in range(8)]
    out = err = ""
    deadline = time.monotonic() + 5
    while "8/8" not in err and time.monotonic() < deadline:  # the dispatcher closes the bar
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
        time.sleep(0.02)
    assert out == ""
    assert "map:" in err and "8/8" in err, err


def test_numpy_round_trip(ex) -> None:  # noqa: ANN001
    np = pytest.importorskip("numpy", reason="numpy is not installed")
    a = np.arange(600_000, dtype=np.int64).reshape(600, 1000)  # 4.8 MB: out-of-band
    assert np.array_equal(ex.submit(t.np_double, a).result(T), a * 2)
    out = list(ex.map(t.np_make, [500_000, 500_000], [1, 2]))
    for s, m in zip([1, 2], out, strict=True):
        assert np.array_equal(m, np.arange(500_000, dtype=np.float64) + s)


def test_processes_attribute(ex) -> None:  # noqa: ANN001
    ex.submit(t.sq, 1).result(T)
    procs = ex._processes
    assert 1 <= len(procs) <= 2  # the workers started so far (on demand but under fork)
    assert all(isinstance(pid, int) and p.pid == pid for pid, p in procs.items())


# ---------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("method", METHODS)
def test_shutdown_wait(method: str) -> None:
    ex = pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context(method))
    futures = [ex.submit(t.sleep_sq, i, 0.05) for i in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 4, 9]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(t.sq, 1)
    with pytest.raises(RuntimeError):
        ex.map(t.sq, [1])
    ex.shutdown()  # again: a no-op


@pytest.mark.parametrize("method", METHODS)
def test_shutdown_no_wait_and_cancel_futures(method: str) -> None:
    ex = pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context(method))
    ex.submit(t.sq, 0).result(T)  # workers up
    running = [ex.submit(t.sleep_for, 0.4) for _ in range(2)]
    time.sleep(0.15)
    pending = [ex.submit(t.sleep_for, 0.4) for _ in range(6)]
    t0 = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - t0 < 0.3
    assert all(f.result(T) == 0.4 for f in running)
    t0 = time.monotonic()
    done, not_done = cf.wait(pending, timeout=T)  # the stdlib's would wait forever here
    assert not not_done and time.monotonic() - t0 < 5
    assert len(list(cf.as_completed(pending, timeout=T))) == len(pending)
    assert sum(f.cancelled() for f in pending) >= 4, [f._state for f in pending]
    assert all(f.cancelled() or f.result() == 0.4 for f in pending)
    with pytest.raises(RuntimeError):
        ex.submit(t.sq, 1)
    assert ex._backend.join(T)


def test_shutdown_before_any_submit() -> None:
    ex = pf.ProcessPoolExecutor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(t.sq, 1)


@pytest.mark.parametrize("method", METHODS)
def test_context_manager(method: str) -> None:
    with pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context(method)) as ex:
        futures = [ex.submit(t.sleep_sq, i, 0.02) for i in range(4)]
        backend = ex._backend
    assert all(f.done() for f in futures)
    assert not backend.thread.is_alive()
    with pytest.raises(RuntimeError):
        ex.submit(t.sq, 1)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError):
        pf.ProcessPoolExecutor(0)
    with pytest.raises(TypeError):
        pf.ProcessPoolExecutor(1, initializer=5)
    with pytest.raises(TypeError):
        pf.ProcessPoolExecutor(1, max_tasks_per_child=1.5)
    with pytest.raises(ValueError):
        pf.ProcessPoolExecutor(1, max_tasks_per_child=0)


@pytest.mark.parametrize("method", METHODS)
def test_initializer(method: str) -> None:
    with pf.ProcessPoolExecutor(2, polyproc.get_context(method), t.init_state,
                                ("from-init",)) as ex:
        assert list(ex.map(t.read_state, range(4), chunksize=1)) == ["from-init"] * 4
        assert ex.submit(t.read_state).result(T) == "from-init"


@pytest.mark.parametrize("method", METHODS)
def test_max_tasks_per_child(method: str) -> None:
    if method == "fork":  # refused, as in the stdlib: see test_futures_lifetime.py
        with pytest.raises(ValueError, match="'fork'"):
            pf.ProcessPoolExecutor(1, mp_context=polyproc.get_context(method),
                                   max_tasks_per_child=1)
        return
    with pf.ProcessPoolExecutor(1, mp_context=polyproc.get_context(method),
                                max_tasks_per_child=1) as ex:
        pids = [ex.submit(t.getpid).result(T) for _ in range(3)]
        assert len(set(pids)) == 3
        assert os.getpid() not in pids


def test_threads_submit_concurrently() -> None:
    with pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context("fork")) as ex:
        results: list = []

        def client(k: int) -> None:
            results.extend(f.result(T) for f in [ex.submit(t.add, k, i) for i in range(20)])

        threads = [threading.Thread(target=client, args=(k * 100,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(T)
        assert sorted(results) == sorted(k * 100 + i for k in range(4) for i in range(20))


def test_max_tasks_per_child_defaults_to_spawn_like_the_stdlib() -> None:
    with pf.ProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
        assert ex._mp_context.get_start_method() == "spawn"
        assert ex.submit(t.sq, 3).result(T) == 9
    with pf.ProcessPoolExecutor(1) as ex:  # without it: the default context, as before
        assert ex._mp_context.get_start_method() == polyproc.get_start_method()
