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

import polyproc
from _scripts import SRC, run_script

TESTS = str(Path(__file__).resolve().parent)
T = 60.0  # bound on every wait for a result



def _have_distributed() -> bool:
    try:
        return importlib.util.find_spec("distributed") is not None
    except (ImportError, ValueError):
        return False


HAVE_DISTRIBUTED = _have_distributed()
needs_dask = pytest.mark.skipif(
    not HAVE_DISTRIBUTED,
    reason="dask.distributed is not installed: pip install 'polyproc[dask]'")


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


def sleep_if_3(x):
    if x == 3:
        time.sleep(60)
    return x


def die_on_7(x):
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def pid_then_sleep(path, delay):
    """First attempt: record this worker's pid in ``path`` and sleep; later ones: return."""
    p = Path(path)
    if p.exists():
        return "second attempt"
    p.write_text(str(os.getpid()))
    time.sleep(delay)
    return "first attempt"


def exits(code):
    sys.exit(code)


_STATE = {}


def init_state(value):
    _STATE["v"] = value


def read_state(_=None):
    return _STATE.get("v")


def bad_init():
    raise RuntimeError("initializer failed")


# ==================================================================== helpers and fixtures


def _dask_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dask", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, env.get("PYTHONPATH", "")])
    return env


def _stop_group(proc: subprocess.Popen) -> None:
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
def _cli_cluster(d: Path, workers: int):
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
            _stop_group(proc)
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """The shared cluster: a scheduler and two single-threaded workers, as processes."""
    if not HAVE_DISTRIBUTED:
        pytest.skip("dask.distributed is not installed: pip install 'polyproc[dask]'")
    with _cli_cluster(tmp_path_factory.mktemp("dask-cli"), 2) as (address, _):
        yield address


def _wait_for_workers(address: str, n: int = 2, timeout: float = 60) -> None:
    """After a test that killed or restarted workers: wait until ``n`` are back."""
    import distributed

    with distributed.Client(address, timeout=30, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=timeout)


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


def outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:
        return ("raised", type(e).__name__, str(e))


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


@needs_dask
def test_worker_killed_mid_task_is_retried(cli_cluster, cli_ctx, tmp_path):
    marker = tmp_path / "pid"
    with cli_ctx.Pool(retries=1) as pool:
        r = pool.apply_async(pid_then_sleep, (str(marker), 60))
        others = pool.map_async(sq, range(20))
        pid = _wait_for_pid(marker)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert r.get(T) == "second attempt"
        assert others.get(T) == [x * x for x in range(20)]
        assert time.monotonic() - t0 < 30
    _wait_for_workers(cli_cluster)


@needs_dask
def test_worker_killed_mid_task_without_retries(cli_cluster, cli_ctx, tmp_path):
    marker = tmp_path / "pid"
    with cli_ctx.Pool() as pool:
        r = pool.apply_async(pid_then_sleep, (str(marker), 60))
        pid = _wait_for_pid(marker)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(polyproc.WorkerLostError, match=f"worker pid {pid} died"):
            r.get(T)
        assert pool.map(sq, range(5)) == [0, 1, 4, 9, 16]
    _wait_for_workers(cli_cluster)


@needs_dask
def test_crash_in_a_batch_blames_only_the_culprit(cli_cluster, cli_pool):
    outcomes = []
    it = cli_pool.imap(die_on_7, range(24), 8)  # task 7 shares a batch with 0..6
    for _ in range(24):
        outcomes.append(outcome(lambda: it.next(T)))
    assert [o for i, o in enumerate(outcomes) if i != 7] == \
        [("ok", i * 10) for i in range(24) if i != 7]
    assert outcomes[7][:2] == ("raised", "WorkerLostError")
    assert "task 7 of imap()" in outcomes[7][2]


@needs_dask
def test_sys_exit_in_a_task(cli_pool):
    # The task's outcome, as on every backend (and the stdlib's executor): the worker goes on.
    with pytest.raises(SystemExit) as info:
        cli_pool.apply(exits, (3,))
    assert info.value.args == (3,)
    assert cli_pool.apply(sq, (3,)) == 9


@needs_dask
def test_task_timeout_stops_the_task(cli_cluster, cli_pool):
    t0 = time.monotonic()
    with pytest.raises(polyproc.TaskTimeoutError, match="timeout of 1"):
        cli_pool.apply_async(sleep_for, (60,), timeout=1).get(T)
    it = cli_pool.imap(sleep_if_3, range(6), 1, timeout=1)
    outcomes = [outcome(lambda: it.next(T)) for _ in range(6)]
    assert [o[1] for o in outcomes[:3] + outcomes[4:]] == [0, 1, 2, 4, 5]
    assert outcomes[3][1] == "TaskTimeoutError"
    assert time.monotonic() - t0 < 40
    _wait_for_workers(cli_cluster)  # the overdue tasks' workers were restarted
    assert cli_pool.map(sq, range(4)) == [0, 1, 4, 9]


@needs_dask
def test_terminate_gives_every_task_an_outcome(cli_ctx):
    pool = cli_ctx.Pool()
    r = pool.map_async(sleep_for, [2] * 6, 1)
    time.sleep(0.5)
    t0 = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - t0 < 20
    with pytest.raises(concurrent.futures.CancelledError):
        r.get(T)


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
            _stop_group(scheduler)
            t0 = time.monotonic()
            with pytest.raises(polyproc.BrokenProcessPool, match="lost its connection"):
                r.get(T)
            assert time.monotonic() - t0 < 30
            with pytest.raises((polyproc.BrokenProcessPool, ValueError)):
                pool.map(sq, range(3))
        finally:
            pool.terminate()
            pool.join()


def _wait_for_pid(marker: Path) -> int:
    deadline = time.monotonic() + T
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    return int(marker.read_text())


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
