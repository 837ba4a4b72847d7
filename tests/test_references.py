"""Nothing is kept alive after the work is done (issue #11): long-running services must not leak.

The parent lets go of a submitted callable (and what a bound method or closure holds) once no
task uses it, with the executor still running; result iterators let go of each result as they
hand it out; a worker lets go of a task's arguments once the task is done, not when the next
one comes. Under every start method.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path

import pytest

import _pool_targets as t
import polyproc
import polyproc.futures as pf
import polyproc.pool

METHODS = ["fork", "spawn", "forkserver"]
T = 30.0

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


def _collected(ref: weakref.ref, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if ref() is None:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("method", METHODS)
def test_submitted_bound_method_is_released(method: str) -> None:
    with pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context(method)) as ex:
        assert ex.submit(t.sq, 2).result(T) == 4  # workers up
        holder = t.Holder()
        freed = threading.Event()
        ref = weakref.ref(holder, lambda _: freed.set())
        assert ex.submit(holder.method).result(T) == 7
        del holder
        assert _collected(ref), "the executor keeps a finished task's callable alive"
        # a closure given to map, likewise
        box = t.Holder()
        ref2 = weakref.ref(box)
        assert list(ex.map(lambda x, b=box: x + b.method(), range(3))) == [7, 8, 9]
        del box
        assert _collected(ref2)
        assert ex.submit(t.sq, 3).result(T) == 9  # still working


@pytest.mark.parametrize("method", METHODS)
def test_result_iterators_release_results_the_caller_dropped(method: str) -> None:
    ctx = polyproc.get_context(method)
    with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex, ctx.Pool(2) as pool:
        for name, it in (("executor map", ex.map(t.make_holder, range(500))),
                         ("imap", pool.imap(t.make_holder, range(500))),
                         ("imap_unordered", pool.imap_unordered(t.make_holder, range(500)))):
            kept = 0
            for obj in it:
                ref = weakref.ref(obj)
                del obj
                kept += ref() is not None
            assert kept == 0, f"{name} kept {kept} results the caller had dropped"


@pytest.mark.parametrize("method", METHODS)
def test_worker_releases_arguments_once_the_task_is_done(method: str, tmp_path: Path) -> None:
    path = tmp_path / "collected"
    with polyproc.get_context(method).Pool(1) as pool:
        assert pool.apply(t.drop, (t.DelMarker(str(path)),)) is None
        # No further task runs: the worker must let go of the argument by itself.
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.exists(), "the worker still holds the finished task's argument"


def test_thread_pool_lets_go_of_task_arguments_and_results() -> None:
    # CPython's test_release_task_refs (ThreadPool): an idle thread kept its last batch's
    # results (the very arguments, for identity) until it ran another batch.
    with polyproc.pool.ThreadPool(4) as pool:
        objs = [t.Holder() for _ in range(10)]
        refs = [weakref.ref(o) for o in objs]
        assert pool.map(t.identity, objs) == objs
        del objs
        kept = [r for r in refs if not _collected(r, timeout=2.0)]
        assert not kept, f"the thread pool keeps {len(kept)} finished tasks' objects"
