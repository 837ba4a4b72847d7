"""Each Python version's own API, and the 3.14 additions offered on every version (issue #11)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

import _pool_targets as t
import polyproc
import polyproc.futures as pf
import polyproc.pool
from polyproc import util

METHODS = ["fork", "spawn", "forkserver"]
T = 30.0

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leaks")]


def test_default_worker_count_follows_the_interpreter() -> None:
    expected = (os.process_cpu_count() if sys.version_info >= (3, 13) else os.cpu_count()) or 1
    assert util._default_worker_count() == expected
    with pf.ProcessPoolExecutor() as ex:
        assert ex._max_workers == expected
    with polyproc.pool.ThreadPool() as pool:
        assert pool._processes == expected
    assert polyproc.cpu_count() == os.cpu_count()  # cpu_count() itself is unchanged


@pytest.mark.parametrize("buffersize", [1, 3, 10])
def test_executor_map_buffersize_bounds_what_is_read_ahead(buffersize: int) -> None:
    taken = []

    def source():  # noqa: ANN202
        for i in range(40):
            taken.append(i)
            yield i

    with pf.ProcessPoolExecutor(2, mp_context=polyproc.get_context("fork")) as ex:
        it = ex.map(t.sq, source(), buffersize=buffersize)
        for k in range(40):
            assert next(it) == k * k
            # let the dispatcher read as far as it is allowed to
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline and len(taken) < min(40, k + 1 + buffersize):
                time.sleep(0.005)
            assert len(taken) <= k + 1 + buffersize, (k, len(taken))
        assert list(it) == []


def test_executor_map_buffersize_is_checked() -> None:
    with pf.ProcessPoolExecutor(1) as ex:
        with pytest.raises(ValueError, match="buffersize must be None or > 0"):
            ex.map(t.sq, [1], buffersize=0)
        with pytest.raises(TypeError, match="buffersize must be an integer or None"):
            ex.map(t.sq, [1], buffersize=2.0)
        assert list(ex.map(t.sq, range(5), buffersize=2)) == [0, 1, 4, 9, 16]


def _wait_interrupt(ready, path: str) -> None:  # noqa: ANN001
    try:
        ready.set()
        time.sleep(60)
    except KeyboardInterrupt:
        with open(path, "w") as f:
            f.write("interrupted")
        raise


@pytest.mark.parametrize("method", METHODS)
def test_process_interrupt_raises_keyboard_interrupt_in_the_child(method: str, tmp_path) -> None:  # noqa: ANN001
    ctx = polyproc.get_context(method)
    ready = ctx.Event()
    path = tmp_path / "flag"
    p = ctx.Process(target=_wait_interrupt, args=(ready, str(path)))
    p.start()
    assert ready.wait(T)
    p.interrupt()
    p.join(T)
    assert p.exitcode == 1  # an uncaught KeyboardInterrupt, as in the stdlib
    assert path.read_text() == "interrupted"


def test_process_interrupt_before_start_and_after_close() -> None:
    p = polyproc.Process(target=t.sq, args=(1,))
    p.interrupt()  # not started: nothing to do, as terminate()
    p.start()
    p.join(T)
    p.close()
    with pytest.raises(ValueError):
        p.interrupt()
    assert signal.SIGINT  # the signal interrupt() sends
    assert threading.active_count() >= 1
