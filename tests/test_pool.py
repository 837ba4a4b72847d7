"""polyproc.Pool (and ThreadPool): the stdlib's pool API under every start method.

Read-only API tests share one pool per start method (a module-scoped fixture); tests of the
pool's lifecycle make their own. Every wait has a timeout, so a bug fails a test, never hangs.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

import _pool_targets as t
import polyproc
import polyproc.dummy
import polyproc.futures as pf
import polyproc.pool
from polyproc._engine.errors import RemoteTraceback

METHODS = ["fork", "spawn", "forkserver"]
T = 30.0  # generous bound on any single wait: reached only when something is broken


@pytest.fixture(scope="module", params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def pool(method: str):  # noqa: ANN201
    p = polyproc.get_context(method).Pool(2)
    yield p
    p.terminate()
    p.join()


def _wait_for(pred, timeout: float = 5.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


# ---------------------------------------------------------------- apply


def test_apply(pool) -> None:  # noqa: ANN001
    assert pool.apply(t.add, (1, 2)) == 3
    assert pool.apply(t.add3, (1, 2), {"c": 3}) == 6
    assert pool.apply(t.identity, ("x",)) == "x"


def test_apply_async_callback(pool) -> None:  # noqa: ANN001
    got: list = []
    done = threading.Event()

    def callback(value: int) -> None:
        got.append(value)
        done.set()

    r = pool.apply_async(t.add, (20, 22), callback=callback,
                         error_callback=lambda e: got.append(("error", e)))
    assert r.get(T) == 42
    assert done.wait(T)
    assert got == [42]
    assert r.ready() and r.successful()


def test_apply_async_error_callback(pool) -> None:  # noqa: ANN001
    got: list = []
    done = threading.Event()

    def error_callback(exc: BaseException) -> None:
        got.append(exc)
        done.set()

    r = pool.apply_async(t.raise_key, (None,), callback=lambda v: got.append(("value", v)),
                         error_callback=error_callback)
    with pytest.raises(KeyError, match="missing"):
        r.get(T)
    assert done.wait(T)
    assert len(got) == 1 and isinstance(got[0], KeyError)
    assert r.ready() and not r.successful()


def test_async_result_states_and_timeout(pool) -> None:  # noqa: ANN001
    r = pool.apply_async(t.sleep_for, (0.5,))
    assert not r.ready()
    with pytest.raises(ValueError):
        r.successful()
    t0 = time.monotonic()
    with pytest.raises(polyproc.TimeoutError):
        r.get(timeout=0.05)
    assert time.monotonic() - t0 < 0.4
    r.wait(0.01)
    assert not r.ready()
    r.wait(T)
    assert r.ready() and r.successful()
    assert r.get(0) == 0.5
    # map_async results behave the same way
    m = pool.map_async(t.sleep_sq, [1, 2], chunksize=1)
    with pytest.raises(polyproc.TimeoutError):
        m.get(timeout=0.01)
    assert m.get(T) == [1, 4]


# ---------------------------------------------------------------- map family


@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map(pool, chunksize) -> None:  # noqa: ANN001
    assert pool.map(t.sq, range(20), chunksize) == [x * x for x in range(20)]
    assert pool.map(t.sq, (x for x in range(7)), chunksize=chunksize) == [x * x for x in range(7)]
    assert pool.map(t.sq, [], chunksize) == []
    # lists, tuples and ranges are sliced into batches (a range batch is itself a range)
    assert pool.map(t.sq, range(5, 300, 7), chunksize) == [x * x for x in range(5, 300, 7)]
    assert pool.map(t.sq, tuple(range(50)), chunksize) == [x * x for x in range(50)]
    assert list(pool.imap(t.sq, range(3, 40), chunksize)) == [x * x for x in range(3, 40)]
    assert pool.starmap(t.add, [(i, i) for i in range(30)], chunksize) == [2 * i for i in range(30)]


@pytest.mark.parametrize("chunksize", [None, 2])
def test_map_async(pool, chunksize) -> None:  # noqa: ANN001
    got: list = []
    r = pool.map_async(t.sq, range(10), chunksize, callback=got.append)
    assert r.get(T) == [x * x for x in range(10)]
    assert _wait_for(lambda: got == [[x * x for x in range(10)]])
    assert r.successful()

    errors: list = []
    r = pool.map_async(t.fail_on, range(6), chunksize, error_callback=errors.append)
    with pytest.raises(ValueError, match="bad value 3"):
        r.get(T)
    assert _wait_for(lambda: len(errors) == 1)
    assert isinstance(errors[0], ValueError)
    assert not r.successful()
    assert pool.map_async(t.sq, []).get(T) == []


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_imap(pool, chunksize) -> None:  # noqa: ANN001
    kw = {} if chunksize is None else {"chunksize": chunksize}
    assert list(pool.imap(t.sq, range(25), **kw)) == [x * x for x in range(25)]
    assert list(pool.imap(t.sq, iter(range(9)), **kw)) == [x * x for x in range(9)]
    assert list(pool.imap(t.sq, [], **kw)) == []
    it = pool.imap(t.sq, [3, 4], **kw)
    assert it.next(T) == 9
    assert it.next(T) == 16
    with pytest.raises(StopIteration):
        it.next(T)


@pytest.mark.parametrize("ordered", [True, False])
def test_imap_iterator_shared_by_threads(pool, ordered) -> None:  # noqa: ANN001
    # Threads consuming one iterator get every result exactly once between them, errors too
    # (results travel in chunks; only moving to the next chunk is serialised).
    n = 20000
    it = (pool.imap if ordered else pool.imap_unordered)(t.fail_on, range(n))
    got: list = []
    failures: list = []
    lock = threading.Lock()

    def consume() -> None:
        mine, bad = [], []
        while True:
            try:
                mine.append(it.next(T))
            except StopIteration:
                break
            except ValueError as e:
                bad.append(str(e))
        with lock:
            got.extend(mine)
            failures.extend(bad)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=consume) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(T)
    finally:
        sys.setswitchinterval(old)
    assert sorted(got) == [10 * x for x in range(n) if x != 3]
    assert len(failures) == 1 and "bad value 3" in failures[0]


def test_imap_next_timeout(pool) -> None:  # noqa: ANN001
    it = pool.imap(t.sleep_for, [0.4])
    with pytest.raises(polyproc.TimeoutError):
        it.next(timeout=0.05)
    assert it.next(T) == 0.4


def test_imap_error_then_continue(pool) -> None:  # noqa: ANN001
    it = pool.imap(t.fail_on, range(5), chunksize=1)
    out = []
    for _ in range(5):
        try:
            out.append(it.next(T))
        except ValueError as e:
            out.append(str(e))
    assert out == [0, 10, 20, "bad value 3", 40]


@pytest.mark.parametrize("chunksize", [None, 1, 5])
def test_imap_unordered(pool, chunksize) -> None:  # noqa: ANN001
    kw = {} if chunksize is None else {"chunksize": chunksize}
    assert sorted(pool.imap_unordered(t.sq, range(30), **kw)) == [x * x for x in range(30)]
    assert sorted(pool.imap_unordered(t.sq, (x for x in range(5)), **kw)) == [0, 1, 4, 9, 16]
    assert list(pool.imap_unordered(t.sq, [], **kw)) == []


@pytest.mark.parametrize("chunksize", [None, 2])
def test_starmap(pool, chunksize) -> None:  # noqa: ANN001
    pairs = [(i, i + 1) for i in range(11)]
    assert pool.starmap(t.add, pairs, chunksize) == [a + b for a, b in pairs]
    assert pool.starmap(t.add3, [(1, 2, 3), (4, 5)], chunksize) == [6, 9]
    assert pool.starmap(t.add, [], chunksize) == []
    got: list = []
    r = pool.starmap_async(t.add, pairs, chunksize, callback=got.append)
    assert r.get(T) == [a + b for a, b in pairs]
    assert _wait_for(lambda: len(got) == 1)
    r = pool.starmap_async(t.fail_on, [(1,), (3,)], chunksize)
    with pytest.raises(ValueError, match="bad value 3"):
        r.get(T)


def test_bad_chunksize(pool) -> None:  # noqa: ANN001
    for call in (pool.map, pool.imap, pool.imap_unordered, pool.starmap):
        with pytest.raises(ValueError):
            call(t.sq, [1], chunksize=0)


# ---------------------------------------------------------------- tasks and errors


def test_lambdas_and_closures(pool) -> None:  # noqa: ANN001
    offset = 100

    def closure(x: int) -> int:
        return x + offset

    assert pool.map(lambda x: x * 3, range(5)) == [0, 3, 6, 9, 12]
    assert pool.apply(closure, (1,)) == 101
    assert list(pool.imap(closure, range(3))) == [100, 101, 102]
    assert sorted(pool.imap_unordered(lambda x: -x, range(3))) == [-2, -1, 0]
    assert pool.starmap(lambda a, b: a * b, [(2, 3), (4, 5)]) == [6, 20]
    assert pool.apply_async(lambda: "no args").get(T) == "no args"


def test_exception_carries_remote_traceback(pool) -> None:  # noqa: ANN001
    pids = set(pool._backend.worker_pids())
    with pytest.raises(ZeroDivisionError, match="deep failure for 2") as info:
        pool.apply(t.fail_deep, (2,))
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "_deep_helper_in_worker" in str(cause)
    assert "ZeroDivisionError" in str(cause)
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1 and "task 0" in notes[0] and "apply()" in notes[0]
    assert any(f"worker pid {pid}" in notes[0] for pid in pids | set(
        pool._backend.worker_pids())), notes


@pytest.mark.parametrize("chunksize", [None, 1, 4])
def test_map_exception_names_task_and_pid(pool, chunksize) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="bad value 3") as info:
        pool.map(t.fail_on, range(8), chunksize)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_on" in str(info.value.__cause__)
    (note,) = info.value.__notes__
    assert "task 3 of map()" in note
    pid = int(note.rsplit("worker pid ", 1)[1].rstrip(")"))
    assert pid in pool._backend.worker_pids()


def test_progress_bar(pool, capsys) -> None:  # noqa: ANN001
    pytest.importorskip("tqdm")
    assert pool.map(t.sq, range(10), progress=True) == [x * x for x in range(10)]
    assert list(pool.imap(t.sq, range(5), progress=True)) == [0, 1, 4, 9, 16]
    assert sorted(pool.imap_unordered(t.sq, range(5), progress=True)) == [0, 1, 4, 9, 16]
    assert pool.starmap(t.add, [(1, 2)] * 4, progress=True) == [3] * 4
    assert pool.map_async(t.sq, range(3), progress=True).get(T) == [0, 1, 4]
    # a bar is closed (its last redraw) by the dispatcher thread, just after the results
    expected = ["map:", "imap:", "imap_unordered:", "starmap:", "10/10", "5/5", "4/4", "100%"]
    out = err = ""
    deadline = time.monotonic() + 5
    while True:
        captured = capsys.readouterr()
        out, err = out + captured.out, err + captured.err
        if all(e in err for e in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert out == ""
    assert [e for e in expected if e not in err] == [], err


def test_large_numpy_arrays(pool) -> None:  # noqa: ANN001
    np = pytest.importorskip("numpy", reason="numpy is not installed")
    from polyproc._engine import wire

    a = np.arange(1_000_000, dtype=np.float64)  # 8 MB: travels out-of-band (memfd)
    payload, fds = wire.dumps(a)
    assert len(fds) == 1 and len(payload) < 4096  # the data is in the memfd, not the frame
    assert np.array_equal(wire.loads(payload, fds), a)
    doubled = pool.apply(t.np_double, (a,))
    assert isinstance(doubled, np.ndarray) and doubled.dtype == np.float64
    assert np.array_equal(doubled, a * 2)
    assert np.array_equal(a, np.arange(1_000_000, dtype=np.float64))  # input untouched
    arrays = [np.full((300, 300), i, dtype=np.int64) for i in range(4)]  # 720 KB each
    out = pool.map(t.np_double, arrays, chunksize=1)
    assert all(np.array_equal(o, x * 2) for o, x in zip(out, arrays, strict=True))
    made = pool.starmap(t.np_make, [(100_000, s) for s in range(3)])
    for s, m in enumerate(made):
        assert np.array_equal(m, np.arange(100_000, dtype=np.float64) + s)
    sums = pool.map(t.np_checksum, arrays)
    assert sums == [((300, 300), "int64", float(i * 90_000)) for i in range(4)]
    small = [np.arange(10) + i for i in range(3)]  # in-band
    assert all(np.array_equal(o, x * 2) for o, x in zip(pool.map(t.np_double, small), small, strict=True))


# ---------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("method", METHODS)
def test_close_join(method: str) -> None:
    p = polyproc.get_context(method).Pool(2)
    r = p.map_async(t.sleep_sq, range(4), chunksize=1)
    with pytest.raises(ValueError, match="Pool is still running"):
        p.join()
    p.close()
    p.join()
    assert r.ready() and r.get(0) == [0, 1, 4, 9]
    for call in (lambda: p.apply(t.sq, (1,)), lambda: p.apply_async(t.sq, (1,)),
                 lambda: p.map(t.sq, [1]), lambda: p.map_async(t.sq, [1]),
                 lambda: p.imap(t.sq, [1]), lambda: p.imap_unordered(t.sq, [1]),
                 lambda: p.starmap(t.add, [(1, 2)]), lambda: p.starmap_async(t.add, [(1, 2)])):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    p.close()  # closing twice is fine
    p.terminate()


@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_close_join_repeatedly(delay: float) -> None:
    # Regression: the dispatcher could finish the last job itself after checking for
    # "closing and idle", then wait for an event that never came: join() hung forever.
    ctx = polyproc.get_context("fork")
    for _ in range(12):
        p = ctx.Pool(2)
        r = p.starmap_async(t.sleep_sq, [(i, delay) for i in range(4)], chunksize=1)
        p.close()
        assert p._backend.join(10), "join() would hang"
        assert r.get(0) == [0, 1, 4, 9]
        p.join()
        ex = pf.ProcessPoolExecutor(2, mp_context=ctx)
        it = ex.map(t.sleep_sq, range(4), [delay] * 4)
        ex.shutdown(wait=False)
        assert ex._backend.join(10), "shutdown(wait=True) would hang"
        assert list(it) == [0, 1, 4, 9]


def test_no_fd_leak_per_pool() -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    ctx = polyproc.get_context("fork")
    with ctx.Pool(2) as p:
        p.map(t.sq, range(4))
    before = fds()
    for _ in range(8):
        with ctx.Pool(2) as p:
            p.map(t.sq, range(4))
        with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            list(ex.map(t.sq, range(4)))
    assert fds() - before <= 2, "a pool leaves file descriptors open"


@pytest.mark.parametrize("method", METHODS)
def test_terminate(method: str) -> None:
    p = polyproc.get_context(method).Pool(2)
    pids = p._backend.worker_pids()
    r = p.apply_async(t.sleep_for, (10,))
    t0 = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - t0 < 8
    import psutil

    assert _wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status()
                                     != psutil.STATUS_ZOMBIE for pid in pids))
    assert r.ready() and not r.successful()  # an outcome, not an endless wait
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(t.sq, (1,))


@pytest.mark.parametrize("method", METHODS)
def test_context_manager_terminates(method: str) -> None:
    with polyproc.get_context(method).Pool(2) as p:
        assert p.map(t.sq, range(4)) == [0, 1, 4, 9]
        backend = p._backend
    assert backend.join(T)
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(t.sq, [1])
    p.join()  # allowed after terminate
    with pytest.raises(NotImplementedError):
        import pickle

        pickle.dumps(p)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError):
        polyproc.Pool(0)
    with pytest.raises(ValueError):
        polyproc.Pool(-1)
    with pytest.raises(TypeError):
        polyproc.Pool(1, initializer=3)
    with pytest.raises(ValueError):
        polyproc.Pool(1, maxtasksperchild=0)


@pytest.mark.parametrize("method", METHODS)
def test_initializer(method: str) -> None:
    with polyproc.get_context(method).Pool(2, t.init_state, ("hello",)) as p:
        assert p.map(t.read_state, range(6), chunksize=1) == ["hello"] * 6
        assert p.apply(t.read_state) == "hello"


@pytest.mark.parametrize("method", METHODS)
def test_maxtasksperchild(method: str) -> None:
    with polyproc.get_context(method).Pool(2, maxtasksperchild=1) as p:
        first = set(p._backend.worker_pids())
        pids = p.map(t.getpid, range(4), chunksize=1)
        assert p.map(t.sq, range(5)) == [0, 1, 4, 9, 16]  # still works with big batches
        assert len(set(pids)) == 4  # every task on a fresh worker
        assert _wait_for(lambda: set(p._backend.worker_pids()) != first)


@pytest.mark.parametrize("method", METHODS)
def test_default_pool_size_and_repr(method: str) -> None:
    with polyproc.get_context(method).Pool() as p:
        assert len(p._backend.worker_pids()) == (polyproc.cpu_count() or 1)
        assert "state=RUN" in repr(p)


def test_module_level_pool_uses_default_context() -> None:
    with polyproc.Pool(1) as p:
        assert p.apply(t.sq, (7,)) == 49


# ---------------------------------------------------------------- thread pools


@pytest.mark.parametrize("factory", [polyproc.pool.ThreadPool, polyproc.dummy.Pool,
                                     polyproc.ThreadPool],
                         ids=["pool.ThreadPool", "dummy.Pool", "polyproc.ThreadPool"])
def test_thread_pool(factory) -> None:  # noqa: ANN001
    lock = threading.Lock()  # unpicklable: a thread pool passes objects as they are
    seen: list = []

    def use_lock(x: int) -> int:
        with lock:
            seen.append(threading.current_thread().name)
        return x + 1

    with factory(3, t.init_state, ("threads",)) as p:
        assert p.map(use_lock, range(10)) == list(range(1, 11))
        assert all(name != threading.current_thread().name for name in seen)
        assert p.apply(t.read_state) == "threads"
        assert list(p.imap(t.sq, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        assert sorted(p.imap_unordered(lambda x: -x, range(4))) == [-3, -2, -1, 0]
        assert p.starmap(t.add, [(1, 1), (2, 2)]) == [2, 4]
        got: list = []
        r = p.apply_async(t.sq, (9,), callback=got.append)
        assert r.get(T) == 81 and _wait_for(lambda: got == [81])
        with pytest.raises(ValueError, match="bad value 3"):
            p.map(t.fail_on, range(5))
        r = p.map_async(t.sleep_sq, [1, 2])
        with pytest.raises(polyproc.TimeoutError):
            r.get(0.001)
        assert r.get(T) == [1, 4]
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(t.sq, (1,))


def test_thread_pool_initializer_raises() -> None:
    t0 = time.monotonic()
    with polyproc.pool.ThreadPool(2, t.init_raise) as p:
        with pytest.raises(polyproc.BrokenProcessPool, match="initializer") as info:
            p.map_async(t.sq, range(4)).get(T)
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(polyproc.BrokenProcessPool):
            p.apply(t.sq, (1,))
    assert time.monotonic() - t0 < 10


def test_thread_pool_close_join() -> None:
    p = polyproc.pool.ThreadPool(2)
    r = p.map_async(t.sleep_sq, range(4))
    with pytest.raises(ValueError):
        p.join()
    p.close()
    p.join()
    assert r.get(0) == [0, 1, 4, 9]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_batch_larger_than_socket_buffer_is_sent_whole(method):
    # Regression: a partially written batch must register for write readiness, or the worker
    # waits mid-message forever when nothing else wakes the dispatcher.
    with polyproc.get_context(method).Pool(2) as pool:
        assert pool.apply(len, (b"x" * 250_000,)) == 250_000
        big = [bytes(200) for _ in range(20_000)]  # one ~4 MB batch, in-band
        assert pool.map(len, big, chunksize=20_000) == [200] * 20_000
