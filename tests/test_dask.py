"""The dask context (issue #6): polyproc's Pool and executor on a Dask distributed cluster.

Two real clusters: a scheduler and two workers started as separate processes with the
``dask scheduler`` / ``dask worker`` command-line tools on loopback (with nannies, which
restart a killed worker), and an embedded ``LocalCluster`` that a pool starts and closes.
The stdlib differential programs of the local pool (tests/test_pool_differential.py) run on
the first one and must print what the stdlib prints.

Every wait is bounded: a test that would hang fails instead. Skipped, with the reason, when
``distributed`` cannot be imported (``pip install 'polyproc[dask]'``).
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from pathlib import Path

import pytest

import polyproc
from _dask_cluster import HAVE_DISTRIBUTED, needs_dask, stop_group
from _dask_cluster import cli_cluster as _cli_cluster
from _dask_cluster import wait_for_workers as _wait_for_workers
from _scripts import run_script

TESTS = str(Path(__file__).resolve().parent)
T = 60.0  # bound on every wait for a result



# ==================================================================== task functions
# Module level, so the Dask workers (PYTHONPATH has tests/) import them by reference.


def sq(x):
    return x * x


def add(a, b):
    return a + b


def fail_on_3(x):
    if x == 3:
        raise ValueError(f"bad value {x}")
    return x


def nbytes_plus(buf, i):
    return len(buf) + i


def sleep_for(delay):
    time.sleep(delay)
    return delay


def die_on_7(x):
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


_STATE = {}


def init_state(value):
    _STATE["v"] = value


def read_state(_=None):
    return _STATE.get("v")


def bad_init():
    raise RuntimeError("initializer failed")


# ==================================================================== helpers and fixtures


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """The shared cluster: a scheduler and two single-threaded workers, as processes."""
    if not HAVE_DISTRIBUTED:
        pytest.skip("dask.distributed is not installed: pip install 'polyproc[dask]'")
    with _cli_cluster(tmp_path_factory.mktemp("dask-cli"), 2) as (address, _):
        yield address


@pytest.fixture
def cli_ctx(cli_cluster):
    return polyproc.get_context("dask", address=cli_cluster)


@pytest.fixture
def cli_pool(cli_cluster, cli_ctx):
    pool = cli_ctx.Pool()
    yield pool
    pool.terminate()
    pool.join()
    _wait_for_workers(cli_cluster)


# ==================================================================== no dask needed


def test_import_polyproc_does_not_import_dask(tmp_path):
    res = run_script(tmp_path, """
        import sys
        import polyproc, polyproc.pool, polyproc.futures
        polyproc.get_context(); polyproc.get_context('spawn'); polyproc.ProcessPoolExecutor
        print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))
        """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_dask_worker_side_imports_no_client_machinery(tmp_path):
    # What a Dask worker loads to run batches: not the driver, scheduler or scatter cache.
    res = run_script(tmp_path, """
        import sys
        import polyproc._backends.dask.worker
        print(sorted(m for m in sys.modules if m in ('distributed', 'concurrent.futures')
                     or m.startswith(('polyproc._backends.dask.', 'polyproc._engine.s'))))
        """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(["polyproc._backends.dask.pickling",
                                      "polyproc._backends.dask.worker",
                                      "polyproc._engine.slots"])


def test_missing_distributed_gives_clear_import_error(tmp_path):
    res = run_script(tmp_path, """
        import sys
        sys.modules['distributed'] = None  # as if not installed
        import polyproc
        try:
            polyproc.get_context('dask')
        except ImportError as e:
            print('ImportError', e)
        """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ImportError") and "pip install 'polyproc[dask]'" in res.stdout


def test_other_contexts_refuse_options():
    with pytest.raises(TypeError):
        polyproc.get_context("spawn", address="tcp://127.0.0.1:1")


# ==================================================================== the stdlib's programs


def _differential_programs():
    try:
        import test_pool_differential as d
    except ImportError as e:  # pragma: no cover - the local pool's differential tests
        pytest.skip(f"tests/test_pool_differential.py not importable: {e}")
    return d


@needs_dask
@pytest.mark.parametrize("program", ["POOL_PROGRAM", "EXECUTOR_PROGRAM"])
def test_stdlib_differential_program_on_dask(tmp_path, cli_cluster, program):
    """The local pool's differential programs print the same on the dask context."""
    d = _differential_programs()
    template = getattr(d, program)
    sources = {
        "stdlib": template.format(method="spawn", lib="multiprocessing",
                                  futures="concurrent.futures"),
        "dask": template.format(method="dask", lib="polyproc", futures="polyproc.futures")
        .replace("mp.get_context('dask')", f"mp.get_context('dask', address={cli_cluster!r})"),
    }
    assert f"address={cli_cluster!r}" in sources["dask"]

    def run(name):
        (tmp_path / name).mkdir()
        proc = run_script(tmp_path / name, sources[name], timeout=120)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
        return [line for line in proc.stdout.splitlines() if not line.startswith("method ")]

    with concurrent.futures.ThreadPoolExecutor(2) as runner:
        futures = {name: runner.submit(run, name) for name in sources}
        out = {name: f.result() for name, f in futures.items()}
    std, got = out["stdlib"], out["dask"]
    assert std and std[-1] == "done", std
    diff = [f"line {i}:\n  stdlib: {a}\n  dask:   {b}"
            for i, (a, b) in enumerate(zip(std, got, strict=False)) if a != b]
    assert not diff and len(std) == len(got), "\n".join(diff + [f"{len(std)} vs {len(got)}"])


# ==================================================================== the CLI cluster


@needs_dask
def test_core_api_on_cli_cluster(cli_pool):
    pool = cli_pool
    assert pool.map(sq, range(50)) == [x * x for x in range(50)]
    assert pool.starmap(add, [(i, 1) for i in range(20)]) == list(range(1, 21))
    assert list(pool.imap(sq, iter(range(30)))) == [x * x for x in range(30)]
    assert sorted(pool.imap_unordered(sq, range(30), 4)) == [x * x for x in range(30)]
    assert pool.apply_async(add, (1,), {"b": 2}).get(T) == 3
    assert pool.map(lambda x: x + 1, range(3)) == [1, 2, 3]  # by value (cloudpickle)
    with pytest.raises(ValueError, match="bad value 3") as info:
        pool.map(fail_on_3, range(10))
    assert "fail_on_3" in str(info.value.__cause__)  # the worker's traceback
    got = []
    r = pool.map_async(sq, range(4), callback=got.append, progress=True)
    assert r.get(T) == [0, 1, 4, 9] and got == [[0, 1, 4, 9]]
    assert len(pool._backend.worker_pids()) == 2
    from polyproc._backends.base import Backend

    assert isinstance(pool._backend, Backend)  # what pool.py and futures.py rely on


@needs_dask
def test_executor_on_cli_cluster(cli_ctx):
    with cli_ctx.ProcessPoolExecutor(retries=1) as ex:
        fs = [ex.submit(sq, i) for i in range(20)]
        assert sorted(f.result(T) for f in concurrent.futures.as_completed(fs, T)) == \
            [i * i for i in range(20)]
        assert list(ex.map(add, range(5), range(5), timeout=T)) == [0, 2, 4, 6, 8]
        assert isinstance(ex.submit(fail_on_3, 3).exception(T), ValueError)


@needs_dask
def test_initializer_and_broken_initializer(cli_ctx):
    with cli_ctx.Pool(initializer=init_state, initargs=("ready",)) as pool:
        assert pool.map(read_state, range(8), 1) == ["ready"] * 8
    with cli_ctx.Pool(initializer=bad_init) as pool:
        with pytest.raises(polyproc.BrokenProcessPool) as info:
            pool.map(sq, range(4))
        assert "initializer" in str(info.value)
        assert isinstance(info.value.__cause__, RuntimeError)


@needs_dask
def test_large_argument_is_scattered_once(cli_pool):
    big = b"x" * (3 << 20)
    t0 = time.monotonic()
    assert cli_pool.starmap(nbytes_plus, [(big, i) for i in range(40)], 2) == \
        [len(big) + i for i in range(40)]
    stats = cli_pool._backend.stats
    assert stats["scattered_objects"] == 1, stats
    assert stats["max_payload"] < 64 << 10, stats  # the buffer never rides in a task
    # Distinct chunks each travel once, straight to a worker (not through the scheduler).
    chunks = [bytes([i]) * (2 << 20) for i in range(4)]
    assert cli_pool.starmap(nbytes_plus, [(c, 0) for c in chunks]) == [2 << 20] * 4
    assert stats["scattered_objects"] == 5 and stats["max_payload"] < 64 << 10, stats
    # Below the threshold one by one, but a batch of them is big: the batch is scattered.
    items = [bytes([i]) * (300 << 10) for i in range(8)]
    assert cli_pool.starmap(nbytes_plus, [(b, 1) for b in items], 8) == [(300 << 10) + 1] * 8
    assert stats["scattered_payloads"] == 1, stats
    assert time.monotonic() - t0 < T


@needs_dask
def test_numpy_chunks_are_scattered(cli_pool):
    np = pytest.importorskip("numpy")
    arr = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    parts = [arr[i:i + (1 << 18)] for i in range(0, len(arr), 1 << 18)]
    assert cli_pool.map(np.sum, parts) == [p.sum() for p in parts]
    assert cli_pool._backend.stats["scattered_objects"] == 4


# Faults common to every backend (killed workers, retries, culprits, timeouts, SystemExit,
# terminate) run from tests/test_backend_faults.py, on this kind of cluster too.


@needs_dask
def test_existing_client_is_left_open(cli_cluster):
    import distributed

    with distributed.Client(cli_cluster, set_as_default=False) as client:
        ctx = polyproc.get_context("dask", client=client)
        with ctx.Pool() as pool:
            assert pool.map(sq, range(10)) == [x * x for x in range(10)]
        assert client.status == "running"
        assert client.submit(sq, 5).result(T) == 25


@needs_dask
def test_unsupported_api_raises_clearly(cli_ctx):
    for make in (cli_ctx.Lock, cli_ctx.Queue, lambda: cli_ctx.Value("i", 0),
                 lambda: cli_ctx.Process(target=sq), cli_ctx.Manager, cli_ctx.Event):
        with pytest.raises(NotImplementedError, match="dask context"):
            make()
    with pytest.raises(NotImplementedError, match="maxtasksperchild"):
        cli_ctx.Pool(maxtasksperchild=5)
    assert cli_ctx.get_start_method() == "dask"


@needs_dask
def test_scheduler_lost_breaks_the_pool_without_hanging(tmp_path):
    with _cli_cluster(tmp_path, 1) as (address, scheduler):
        # timeout: how long the client tries to reconnect before it gives up (and we do)
        pool = polyproc.get_context("dask", address=address, timeout=3).Pool()
        try:
            assert pool.map(sq, range(5)) == [0, 1, 4, 9, 16]
            r = pool.map_async(sleep_for, [0.5] * 20, 1)
            time.sleep(0.5)
            stop_group(scheduler)
            t0 = time.monotonic()
            with pytest.raises(polyproc.BrokenProcessPool, match="lost its connection"):
                r.get(T)
            assert time.monotonic() - t0 < 30
            with pytest.raises((polyproc.BrokenProcessPool, ValueError)):
                pool.map(sq, range(3))
        finally:
            pool.terminate()
            pool.join()


# ==================================================================== the embedded cluster


@needs_dask
def test_embedded_local_cluster(tmp_path):
    """No address: the pool starts a LocalCluster of worker processes and closes it."""
    import psutil

    def children():  # the stdlib's resource tracker (a helper) lives on: not ours
        procs = psutil.Process().children(recursive=True)
        return {p.pid for p in procs if "resource_tracker" not in " ".join(_cmdline(p))}

    ctx = polyproc.get_context("dask", n_workers=2)
    before = children()
    with ctx.Pool() as pool:
        backend = pool._backend
        assert backend._cluster is not None
        assert len(backend.worker_pids()) == 2
        assert pool.map(sq, range(100)) == [x * x for x in range(100)]
        assert pool.starmap(add, [(1, 2)] * 5) == [3] * 5
        with pytest.raises(ValueError, match="bad value 3"):
            pool.apply(fail_on_3, (3,))
        with pytest.raises(polyproc.WorkerLostError, match="task 7 of map"):
            pool.map(die_on_7, range(10), 10)
    deadline = time.monotonic() + 20
    while children() - before:
        assert time.monotonic() < deadline, "the embedded cluster's processes outlived it"
        time.sleep(0.1)
    assert backend.client.status == "closed"


def _cmdline(proc):
    try:
        return proc.cmdline()
    except Exception:
        return []
