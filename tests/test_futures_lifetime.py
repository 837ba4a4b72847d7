"""What becomes of a ProcessPoolExecutor nobody shuts down, and ``max_tasks_per_child`` per
start method (both as the stdlib's executor does; see docs/migrating.md)."""

from __future__ import annotations

import pytest

import _pool_targets as t
import polyproc
import polyproc.futures as pf

T = 30.0


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
