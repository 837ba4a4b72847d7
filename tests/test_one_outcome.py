"""Exactly one outcome per task, even when one item is bad (issue #16, points 1 and 2).

Among ``N`` tasks run with default chunking, the one at index ``BAD`` misbehaves: its argument
does not pickle, its result or exception does not pickle or unpickle (whatever its ``repr`` or
``str`` does), its result is nested too deep to pickle, or it calls ``sys.exit()``. Exactly that
task fails, with the class the stdlib raises in that situation; every other task gets its right
result; the pool works afterwards. Under fork, spawn and forkserver, for ``Pool`` (``map``,
``imap``, ``imap_unordered``, ``apply_async``) and the executor (``submit``, ``map``).
"""

from __future__ import annotations

import functools
import pickle
import threading

import pytest

import _bad_items as b
import polyproc
import polyproc.futures as pf

METHODS = ["fork", "spawn", "forkserver"]
T = 60.0

#: What each kind of bad item makes its task fail with (stdlib-compatible classes).
KINDS = {
    "argument_unpicklable": TypeError,
    "result_unloadable": polyproc.BrokenProcessPool,
    "exception_bad_init": polyproc.BrokenProcessPool,
    "result_unpicklable_bad_repr": pickle.PicklingError,
    "exception_unpicklable_bad_str": pickle.PicklingError,
    "result_deeply_nested": pickle.PicklingError,
    "sys_exit": SystemExit,
    # The stdlib's executor: the SystemExit raised while pickling is the outcome (CPython's
    # test_exit_during_result_pickle_on_worker); its Pool loses the worker and hangs.
    "result_exits_when_pickled": SystemExit,
}
APIS = ["map", "imap", "imap_unordered", "apply_async", "submit", "executor_map"]

# The pools are shared by a module's tests (the session's leak check covers them); the tests
# that make their own pools check for leaks each.
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=METHODS)
def pools(request: pytest.FixtureRequest):  # noqa: ANN201
    ctx = polyproc.get_context(request.param)
    with ctx.Pool(2) as pool, pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        yield pool, ex


def _call(kind: str) -> tuple:
    """The function and the N arguments of a run where only item BAD is bad."""
    if kind == "argument_unpicklable":
        return b.sq, [threading.Lock() if i == b.BAD else i for i in range(b.N)]
    return functools.partial(b.task, kind), list(range(b.N))


def _outcomes(api: str, pool, ex, fn, args) -> list:  # noqa: ANN001
    """(ok, value) for every task, in input order."""
    def get(f):  # noqa: ANN001, ANN202
        try:
            return True, f()
        except BaseException as e:  # noqa: BLE001 - SystemExit is an outcome here
            return False, e

    if api == "apply_async":
        results = [pool.apply_async(fn, (a,)) for a in args]
        return [get(lambda r=r: r.get(T)) for r in results]
    if api == "submit":
        futures = [ex.submit(fn, a) for a in args]
        return [get(lambda f=f: f.result(T)) for f in futures]
    if api in ("imap", "imap_unordered"):
        tagged = functools.partial(_tag, fn)
        it = getattr(pool, api)(tagged, list(enumerate(args)))
        out: dict = {}
        errors = []
        for _ in range(len(args)):
            try:
                i, v = it.next(T)
                out[i] = (True, v)
            except StopIteration:
                raise AssertionError("fewer outcomes than tasks") from None
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
        with pytest.raises(StopIteration):
            it.next(T)
        if api == "imap":  # ordered: the error stands at its index
            assert len(errors) == 1 and b.BAD not in out
        missing = [i for i in range(len(args)) if i not in out]
        for i, e in zip(missing, errors, strict=True):
            out[i] = (False, e)
        return [out[i] for i in range(len(args))]
    if api == "map":  # map gives the first error for the whole call: the others must run
        with pytest.raises(BaseException) as info:  # noqa: PT011
            pool.map(fn, args)
        good = pool.map(fn, [a for i, a in enumerate(args) if i != b.BAD])
        good.insert(b.BAD, None)
        return [(False, info.value) if i == b.BAD else (True, v) for i, v in enumerate(good)]
    if api == "executor_map":
        out = []
        it = ex.map(fn, args, timeout=T)
        for _ in range(b.BAD):
            out.append((True, next(it)))
        try:
            next(it)
            raise AssertionError("the bad item's task did not fail")
        except BaseException as e:  # noqa: BLE001
            out.append((False, e))
        # map stops at the first error (stdlib): the rest, mapped again, must all succeed
        out += [(True, v) for v in ex.map(fn, args[b.BAD + 1:], timeout=T)]
        return out
    raise AssertionError(api)


def _tag(fn, pair):  # noqa: ANN001, ANN202
    i, a = pair
    return i, fn(a)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_one_bad_item_fails_only_its_task(pools, kind: str, api: str) -> None:  # noqa: ANN001
    pool, ex = pools
    fn, args = _call(kind)
    outcomes = _outcomes(api, pool, ex, fn, args)
    assert len(outcomes) == b.N
    failed = [i for i, (ok, _v) in enumerate(outcomes) if not ok]
    assert failed == [b.BAD], f"{len(failed)} tasks failed: {failed[:10]}"
    wrong = [i for i, (ok, v) in enumerate(outcomes) if ok and v != i * i]
    assert not wrong
    err = outcomes[b.BAD][1]
    if kind == "exception_bad_init" and isinstance(err, b.BadInitError):
        # Something in this process made such exceptions picklable (tblib's pickling
        # support, which distributed installs on exceptions it handles, rebuilds them
        # without __init__): then the exception itself arrives, which is better still.
        pass
    else:
        assert isinstance(err, KINDS[kind]), repr(err)
    if kind == "exception_bad_init" and not isinstance(err, b.BadInitError):
        assert "BadInitError" in str(err) and "picklable" in str(err)
    # the pool is not broken, for any API
    assert pool.apply(b.sq, (3,)) == 9
    assert ex.submit(b.sq, 4).result(T) == 16


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("method", METHODS)
def test_workers_dying_after_running_tasks_never_break_the_pool(method: str) -> None:
    # A worker that dies while sending a task's outcome has run that task: such deaths are
    # not start-up failures, however many, and each fails only its own task.
    ctx = polyproc.get_context(method)
    n_deaths = 8  # more than the start-up failure limit (3 per worker) of a 2-worker pool
    with ctx.Pool(2) as pool:
        results = [pool.apply_async(b.kill_when_pickled) for _ in range(n_deaths)]
        for r in results:
            with pytest.raises(polyproc.WorkerLostError):
                r.get(T)
        assert pool.map(b.sq, range(50)) == [i * i for i in range(50)]
    with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        futures = [ex.submit(b.kill_when_pickled) for _ in range(n_deaths)]
        for f in futures:
            assert isinstance(f.exception(T), polyproc.BrokenProcessPool)
        assert ex.submit(b.sq, 5).result(T) == 25


@pytest.mark.usefixtures("no_leaks")
def test_thread_pool_delivers_system_exit() -> None:
    with polyproc.pool.ThreadPool(2) as pool:
        r = pool.apply_async(b.task, ("sys_exit", b.BAD))
        with pytest.raises(SystemExit):
            r.get(T)
        assert pool.map(functools.partial(b.task, "sys_exit"), range(5)) == [0, 1, 4, 9, 16]
