"""The seams between the stdlib's multiprocessing (loaded by the program itself) and polyproc,
without whole-program mode (#12 point 2): never a hang; the stdlib's objects cross into
polyproc children as into its own; a stdlib queue's messages from a polyproc child arrive."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import multiprocessing as stdlib_mp
import multiprocessing.pool as stdlib_pool
import subprocess
import sys
import time
from pathlib import Path

import pytest

import polyproc
import polyproc.futures as pf

pytestmark = pytest.mark.timeout(120)

METHODS = ["fork", "spawn", "forkserver"]


def sq(x: int) -> int:
    return x * x


def put_under_lock(q, lock) -> None:  # noqa: ANN001
    with lock:
        q.put("from a polyproc child")


def send(conn, what: str) -> None:  # noqa: ANN001
    conn.send(what)


@pytest.mark.parametrize("method", METHODS)
def test_stdlib_pools_refuse_a_polyproc_context_at_once(method: str) -> None:
    ctx = polyproc.get_context(method)
    t0 = time.monotonic()
    with pytest.raises(TypeError, match=r"polyproc\.futures\.ProcessPoolExecutor.*polyproc run"):
        cf.ProcessPoolExecutor(2, mp_context=ctx)
    with pytest.raises(TypeError, match=r"polyproc\.Pool.*polyproc run"):
        stdlib_pool.Pool(2, context=ctx)
    assert time.monotonic() - t0 < 10


def test_polyproc_contexts_are_stdlib_contexts_once_it_is_loaded() -> None:
    # Libraries check isinstance(ctx, multiprocessing.context.BaseContext) (PyTorch does).
    for ctx in (polyproc.get_context(), *map(polyproc.get_context, METHODS)):
        assert isinstance(ctx, stdlib_mp.context.BaseContext)
        assert isinstance(ctx, polyproc.context.BaseContext)
        assert ctx.Process.__module__.startswith("polyproc")


@pytest.mark.parametrize("method", METHODS)
def test_torch_dataloader_takes_a_polyproc_context(method: str) -> None:
    # Tensors from spawn/forkserver workers travel by the stdlib's fd passing (torch registers
    # its reducers with the stdlib): the child has the parent's stdlib authkey for it.
    pytest.importorskip("torch")
    scripts = Path(__file__).parent / "scripts"
    out = subprocess.run([sys.executable, "torch_dataloader_context.py", method],
                         capture_output=True, text=True, timeout=240, cwd=scripts)
    assert out.returncode == 0, out.stdout + out.stderr
    want = [[float(i * i) for i in range(b, b + 4)] for b in range(0, 16, 4)]
    assert out.stdout.strip().splitlines()[-1] == f"{method} {want} polyproc"


@pytest.mark.parametrize("method", METHODS)
def test_stdlib_queue_lock_and_pipe_cross_into_polyproc_children(method: str) -> None:
    sctx = stdlib_mp.get_context(method)
    q, lock = sctx.Queue(), sctx.Lock()
    p = polyproc.get_context(method).Process(target=put_under_lock, args=(q, lock))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert q.get(timeout=30) == "from a polyproc child"  # flushed before the child exited
    r, w = sctx.Pipe()
    p = polyproc.get_context(method).Process(target=send, args=(w, "over a stdlib pipe"))
    p.start()
    p.join(60)
    assert r.poll(30) and r.recv() == "over a stdlib pipe"


def test_dask_takes_a_polyproc_pool() -> None:
    dask = pytest.importorskip("dask")
    import dask.bag as db

    with polyproc.Pool(2) as pool, dask.config.set(scheduler="processes", pool=pool):
        assert db.from_sequence(range(20), npartitions=4).map(sq).sum().compute() == 2470
    with pf.ProcessPoolExecutor(2) as ex, dask.config.set(scheduler="processes", pool=ex):
        assert db.from_sequence(range(20), npartitions=4).map(sq).sum().compute() == 2470


def test_asyncio_runs_in_polyproc_executors_and_pools() -> None:
    async def main(executor):  # noqa: ANN001, ANN202
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(executor, sq, i) for i in range(5)))

    with pf.ProcessPoolExecutor(2) as ex:
        assert asyncio.run(main(ex)) == [0, 1, 4, 9, 16]

        async def wrapped():  # noqa: ANN202
            return await asyncio.wait_for(asyncio.wrap_future(ex.submit(sq, 7)), 30)

        assert asyncio.run(wrapped()) == 49
    with polyproc.Pool(2) as pool:
        assert asyncio.run(main(pool)) == [0, 1, 4, 9, 16]
