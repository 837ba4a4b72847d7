"""The Scheduler as a pure state machine: driven by a fake backend, no process, no thread.

Like dask/distributed's ``test_worker_state_machine.py``: each test feeds the scheduler the
events a backend would report (a batch completed, a worker was lost, a batch could not be
pickled or its outcomes unpickled) and checks what it decides: the batches it hands out,
the messages for workers, and the one outcome each task gets. Costs are fed in as numbers,
so chunk sizes are exact. The last tests check that every backend provides the ``Backend``
interface and that both faces choose their backend with ``make_backend``.
"""

from __future__ import annotations

import concurrent.futures
import gc
import inspect
import pickle
import typing
import weakref

import pytest

import polyproc
import polyproc.futures
import polyproc.pool
from polyproc._backends.base import Backend, make_backend
from polyproc._backends.local import LocalBackend
from polyproc._backends.threads import ThreadBackend
from polyproc._engine import scheduler as sched_mod
from polyproc._engine.broken import WorkerLostError
from polyproc._engine.errors import TaskTimeoutError
from polyproc._engine.jobs import Culprit, Job
from polyproc._engine.results import FutureSink, IMapIterator, ResultSink
from polyproc._engine.scheduler import Scheduler, learn_funcs

pytestmark = pytest.mark.timeout(30)

MS = 1_000_000


def double(x):
    return 2 * x


def add(a, b):
    return a + b


class Recorder(ResultSink):
    """A result sink that records every outcome (and fails a test that gets two)."""

    def __init__(self) -> None:
        self.outcomes: dict[int, tuple[bool, object]] = {}
        self.finished = False

    def deliver(self, index, ok, value):
        assert index not in self.outcomes, f"task {index} got a second outcome"
        assert not self.finished, "an outcome after finish()"
        self.outcomes[index] = (ok, value)

    def finish(self):
        assert not self.finished, "finish() twice"
        self.finished = True

    def values(self):
        return [self.outcomes[i][1] for i in sorted(self.outcomes)]


class FakeBackend:
    """Plays a backend: asks for batches, 'runs' them in-process, reports outcomes."""

    def __init__(self, n_workers: int = 2, **params) -> None:
        self.wakeups = 0
        self.scheduler = Scheduler(n_workers, self.wakeup, **params)

    def wakeup(self) -> None:
        self.wakeups += 1

    def take(self, limit=None):
        return self.scheduler.next_batch(None, limit)

    @staticmethod
    def outcomes(batch):
        """What the batch's tasks return (run here), as a worker would report them."""
        values, errors = [], {}
        for pos in range(len(batch)):
            job = batch.job_at(pos)
            args = batch.items[pos] if batch.job is not None else batch.items[pos][1]
            try:
                values.append(job.func(*args) if job.star else job.func(args))
            except Exception as e:
                values.append(None)
                errors[pos] = e
        return values, errors or None

    def finish(self, batch, ns_per_task: float = 1000.0):
        values, errors = self.outcomes(batch)
        return self.scheduler.complete(batch.id, values, errors,
                                       int(ns_per_task * len(batch)), pid=4242)

    def drain(self, ns_per_task: float = 1000.0) -> list[int]:
        """Run everything; the sizes of the batches handed out, in order."""
        sizes = []
        while (batch := self.take()) is not None:
            sizes.append(len(batch))
            self.finish(batch, ns_per_task)
        return sizes


def map_job(n, func=double, **kwargs):
    sink = Recorder()
    return Job("map", func, range(n), sink, length=n, **kwargs), sink


def apply_job(func, args, **kwargs):
    sink = Recorder()
    return Job("apply", func, tuple(args), sink, length=1, star=True, single=True,
               **kwargs), sink


# ==================================================================== chunking


def test_chunks_grow_by_growth_toward_the_map_target():
    be = FakeBackend(2)
    job, sink = map_job(1_000_000)
    be.scheduler.submit(job)
    sizes = []
    for _ in range(7):  # the first: one task, its cost is not known yet
        batch = be.take()
        sizes.append(len(batch))
        be.finish(batch, 10_000)  # 10 us a task: 16 ms is 1600 tasks
    assert sizes == [1, 8, 64, 512, 1600, 1600, 1600]
    be.scheduler.cancel_pending()
    assert sink.finished


def test_map_target_is_a_parameter():
    be = FakeBackend(2, map_target_ns=50 * MS)
    job, _sink = map_job(1_000_000)
    be.scheduler.submit(job)
    sizes = []
    for _ in range(7):
        batch = be.take()
        sizes.append(len(batch))
        be.finish(batch, 10_000)
    assert sizes[-1] == 5000 and max(sizes) == 5000


def test_guided_tail_shrinks_batches_near_the_end():
    be = FakeBackend(2)  # GUIDED 8: a batch holds at most 1/16 of what is left
    job, sink = map_job(20_000)
    be.scheduler.submit(job)
    sizes = be.drain(ns_per_task=100_000)  # 0.1 ms a task: 160 at the target, tail >= 5
    assert sink.finished and sink.values() == [2 * x for x in range(20_000)]
    assert max(sizes) == 160
    peak = sizes.index(160)
    tail = sizes[peak:]
    assert tail == sorted(tail, reverse=True), "batches only shrink near the end"
    assert tail[-2] >= 5 and tail[-1] <= 5  # no batch under tail_ns, but the remainder
    assert len(tail) > 20_000 // 160  # more, smaller batches than without the tail


def test_tail_as_large_as_the_target_turns_the_tail_off():
    be = FakeBackend(2, tail_ns=sched_mod.MAP_TARGET_NS)
    job, sink = map_job(20_000)
    be.scheduler.submit(job)
    sizes = be.drain(ns_per_task=100_000)
    assert sink.finished
    first_full = sizes.index(160)
    assert set(sizes[first_full:-1]) == {160} and sizes[-1] <= 160


def test_dask_parameters():
    from polyproc._backends.dask import pickling, scheduling

    s = scheduling.make_scheduler(4, lambda: None)
    assert s.map_target_ns == s.single_target_ns == scheduling.MAP_TARGET_NS == 50 * MS
    assert s.tail_ns >= s.map_target_ns  # no guided tail on Dask
    assert s._dumps is pickling.dumps


def test_single_calls_are_packed_up_to_the_single_target():
    for target, want in ((16 * MS, 16), (4 * MS, 4)):
        be = FakeBackend(1, single_target_ns=target)
        sinks = []
        for i in range(100):
            job, sink = apply_job(add, (i, 1))
            be.scheduler.submit(job)
            sinks.append(sink)
        first = be.take()
        assert len(first) == 1  # the function's cost is not known yet
        be.finish(first, 1 * MS)
        second = be.take()
        assert len(second) == want and second.isolated is False
        be.finish(second, 1 * MS)
        be.drain(1 * MS)
        assert [s.outcomes[0] for s in sinks] == [(True, i + 1) for i in range(100)]


# ==================================================================== lost workers


def test_culprit_unknown_batch_is_rerun_task_by_task():
    be = FakeBackend(2)
    job, sink = map_job(8, chunksize=4)
    be.scheduler.submit(job)
    batch = be.take()
    assert list(batch.indices) == [0, 1, 2, 3]
    be.scheduler.worker_lost([batch], Culprit(batch.id), pid=11, exitcode=-9)
    reruns = [be.take() for _ in range(4)]
    assert [list(b.indices) for b in reruns] == [[0], [1], [2], [3]]
    assert all(b.isolated for b in reruns)
    for b in reruns:
        if list(b.indices) == [2]:  # the culprit kills its worker again, alone this time
            be.scheduler.worker_lost([b], Culprit(b.id), pid=12, exitcode=-9)
        else:
            be.finish(b)
    be.drain()
    assert sink.finished and len(sink.outcomes) == 8
    ok, err = sink.outcomes[2]
    assert not ok and isinstance(err, WorkerLostError)
    assert "worker pid 12" in str(err) and "task 2 of map()" in str(err)
    assert all(sink.outcomes[i] == (True, 2 * i) for i in range(8) if i != 2)


def test_known_culprit_fails_alone_and_the_rest_reruns_together():
    be = FakeBackend(2)
    job, sink = map_job(4, chunksize=4)
    be.scheduler.submit(job)
    batch = be.take()
    be.scheduler.worker_lost([batch], Culprit(batch.id, 1), pid=11, exitcode=-11)
    rerun = be.take()
    assert list(rerun.indices) == [0, 2, 3] and not rerun.isolated
    be.finish(rerun)
    assert sink.finished
    assert isinstance(sink.outcomes[1][1], WorkerLostError)
    assert "SIGSEGV" in str(sink.outcomes[1][1]) or "signal" in str(sink.outcomes[1][1])


def test_no_culprit_reruns_everything_and_blames_nobody():
    be = FakeBackend(2)
    job, sink = map_job(6, chunksize=3)
    be.scheduler.submit(job)
    first, second = be.take(), be.take()
    be.scheduler.worker_lost([first, second], None, pid=11, exitcode=None)
    assert be.drain() == [3, 3]
    assert sink.values() == [2 * x for x in range(6)]


def test_slot_row_call_shape_still_works():
    # LocalBackend's call: worker_lost(batches, (row[0], row[1]), pid, exitcode, timed_out)
    be = FakeBackend(2)
    job, sink = map_job(3, chunksize=3, timeout=5.0)
    be.scheduler.submit(job)
    batch = be.take()
    be.scheduler.worker_lost([batch], (batch.id, 1), 11, -9, (batch.id, 1))
    be.drain()
    assert isinstance(sink.outcomes[1][1], TaskTimeoutError)
    assert sink.outcomes[0] == (True, 0) and sink.outcomes[2] == (True, 4)
    assert Culprit.from_slot((0, -1, 0, 0)) is None
    assert Culprit.from_slot((7, 2, 123, 99)) == Culprit(7, 2, False)
    assert Culprit.from_slot((7, 2), timed_out=(7, 2)) == Culprit(7, 2, True)
    assert Culprit.from_slot((7, 3), timed_out=(7, 2)).timed_out is False


def test_retries_then_worker_lost_error():
    be = FakeBackend(1)
    job, sink = apply_job(add, (1, 2), retries=2)
    be.scheduler.submit(job)
    for attempt in range(3):
        batch = be.take()
        assert batch is not None and len(batch) == 1, attempt
        be.scheduler.worker_lost([batch], Culprit(batch.id), pid=20 + attempt, exitcode=1)
    assert be.take() is None and sink.finished
    err = sink.outcomes[0][1]
    assert isinstance(err, WorkerLostError) and "after 3 attempts" in str(err)


def test_a_retried_task_can_succeed():
    be = FakeBackend(1)
    job, sink = map_job(2, chunksize=2, retries=1)
    be.scheduler.submit(job)
    batch = be.take()
    be.scheduler.worker_lost([batch], Culprit(batch.id, 0), pid=1, exitcode=-9)
    assert be.drain() == [1, 1]  # the culprit alone, then the other one
    assert sink.values() == [0, 2]


# ==================================================================== timeouts


def test_timeout_fails_only_the_overdue_task_and_is_never_retried():
    be = FakeBackend(2)
    job, sink = map_job(4, chunksize=4, timeout=0.5, retries=3)
    be.scheduler.submit(job)
    assert be.scheduler.running_jobs_with_timeout()
    batch = be.take()
    assert batch.precise  # a timed job's tasks are run one by one, each watched
    be.scheduler.worker_lost([batch], Culprit(batch.id, 2, timed_out=True), pid=31)
    be.drain()
    ok, err = sink.outcomes[2]
    assert not ok and isinstance(err, TaskTimeoutError)
    assert "timeout of 0.5 s" in str(err) and "pid 31" in str(err)
    assert [sink.outcomes[i] for i in (0, 1, 3)] == [(True, 0), (True, 2), (True, 6)]
    assert sink.finished and not be.scheduler.running_jobs_with_timeout()


# ==================================================================== windows


def test_imap_window_holds_back_until_results_are_consumed():
    be = FakeBackend(1)
    it = IMapIterator()
    job = Job("imap", double, iter(range(1000)), it, window=4, chunksize=1)
    be.scheduler.submit(job)
    sent = 0
    while (batch := be.take()) is not None:
        sent += len(batch)
        be.finish(batch)
    window = job._window()
    assert sent == window < 1000  # the window is full of unconsumed results
    woken = be.wakeups
    assert next(it) == 0  # consuming wakes the backend: there is room again
    assert be.wakeups > woken
    assert be.take() is not None


def test_strict_window_bounds_exactly():
    be = FakeBackend(4)
    it = IMapIterator()
    job = Job("map", double, iter(range(100)), it, window=3, strict_window=True)
    be.scheduler.submit(job)
    held = []
    while (batch := be.take()) is not None:
        held.append(batch)
        assert sum(map(len, held)) <= 3
    assert sum(map(len, held)) == 3
    for b in held:
        be.finish(b)
    assert be.take() is None  # 3 results unconsumed: still no room
    assert [next(it) for _ in range(3)] == [0, 2, 4]
    assert be.take() is not None


def test_lift_windows_runs_everything_when_closing():
    be = FakeBackend(1)
    it = IMapIterator()
    job = Job("imap", double, iter(range(50)), it, window=2, strict_window=True)
    be.scheduler.submit(job)
    be.drain()
    assert not be.scheduler.idle()
    be.scheduler.lift_windows()
    be.drain()
    assert be.scheduler.idle() and list(it) == [2 * x for x in range(50)]


# ==================================================================== cancellation


def test_cancel_pending_cancels_unsent_tasks_and_keeps_sent_ones():
    be = FakeBackend(2)
    job, sink = map_job(10, chunksize=2)
    be.scheduler.submit(job)
    batch = be.take()
    be.scheduler.cancel_pending()
    assert be.take() is None and not sink.finished  # its batch in flight still counts
    be.finish(batch)
    assert sink.finished and len(sink.outcomes) == 10
    assert sink.outcomes[0] == (True, 0) and sink.outcomes[1] == (True, 2)
    for i in range(2, 10):
        ok, err = sink.outcomes[i]
        assert not ok and isinstance(err, concurrent.futures.CancelledError)
    assert be.scheduler.idle()


def test_cancelled_future_is_skipped_and_notified():
    be = FakeBackend(1)
    futures = [concurrent.futures.Future() for _ in range(3)]
    for i, f in enumerate(futures):
        be.scheduler.submit(Job("submit", add, (i, 10), FutureSink(f), length=1, star=True,
                                single=True))
    assert futures[1].cancel()
    be.drain()
    done, not_done = concurrent.futures.wait(futures, timeout=0)
    assert not not_done  # the cancelled one reached CANCELLED_AND_NOTIFIED
    assert futures[0].result() == 10 and futures[2].result() == 12
    assert futures[1].cancelled() and be.scheduler.idle()


def test_cancel_pending_notifies_queued_futures():
    be = FakeBackend(1)
    f = concurrent.futures.Future()
    be.scheduler.submit(Job("submit", add, (1, 1), FutureSink(f), length=1, star=True,
                            single=True))
    be.scheduler.cancel_pending()
    assert f.cancelled()
    assert not concurrent.futures.wait([f], timeout=0).not_done


# ==================================================================== bad items


class Unpicklable:
    def __reduce__(self):
        raise TypeError("cannot pickle this argument")


def _pickling_error(obj):
    try:
        pickle.dumps(obj)
    except Exception as e:
        return e
    return None


def test_unsendable_fails_only_the_bad_argument():
    be = FakeBackend(1)
    bad = Unpicklable()
    sink = Recorder()
    be.scheduler.submit(Job("map", repr, [1, 2, bad, 4], sink, length=4, chunksize=4))
    batch = be.take()
    with pytest.raises(TypeError) as info:
        pickle.dumps(be.scheduler.batch_message(batch, set()))
    be.scheduler.unsendable(batch, info.value, _pickling_error)
    rerun = be.take()
    assert list(rerun.indices) == [0, 1, 3]
    be.finish(rerun)
    assert sink.finished
    ok, err = sink.outcomes[2]
    assert not ok and "cannot pickle this argument" in str(err)
    assert any("task 2 of map()" in n for n in getattr(err, "__notes__", []))
    assert [sink.outcomes[i] for i in (0, 1, 3)] == [(True, "1"), (True, "2"), (True, "4")]


def test_unsendable_with_nobody_to_blame_fails_the_batch():
    be = FakeBackend(1)
    job, sink = map_job(3, chunksize=3)
    be.scheduler.submit(job)
    batch = be.take()
    error = pickle.PicklingError("the function does not pickle")
    be.scheduler.unsendable(batch, error, lambda obj: None)
    assert sink.finished and all(sink.outcomes[i] == (False, error) for i in range(3))


def test_unloadable_outcomes_rerun_isolated_and_only_the_culprit_fails():
    be = FakeBackend(1)
    job, sink = map_job(4, chunksize=4)
    be.scheduler.submit(job)
    batch = be.take()
    be.scheduler.outcomes_unloadable(batch, RuntimeError("cannot unpickle"))
    reruns = [be.take() for _ in range(4)]
    assert [list(b.indices) for b in reruns] == [[0], [1], [2], [3]]
    culprit_error = RuntimeError("task 1's outcome cannot be unpickled")
    for b in reruns:
        if list(b.indices) == [1]:
            be.scheduler.outcomes_unloadable(b, culprit_error)
        else:
            be.finish(b)
    assert sink.finished
    assert sink.outcomes[1] == (False, culprit_error)
    assert [sink.outcomes[i] for i in (0, 2, 3)] == [(True, 0), (True, 4), (True, 6)]


def test_fail_batch_fails_every_task_of_the_batch_only():
    be = FakeBackend(1)
    job, sink = map_job(4, chunksize=2)
    be.scheduler.submit(job)
    batch = be.take()
    error = ImportError("no module named 'mytasks' on the worker")
    be.scheduler.fail_batch(batch, error)
    be.drain()
    assert sink.outcomes[0] == sink.outcomes[1] == (False, error)
    assert sink.outcomes[2] == (True, 4) and sink.outcomes[3] == (True, 6)


def test_task_errors_are_annotated_with_task_and_pid():
    be = FakeBackend(1)
    sink = Recorder()
    be.scheduler.submit(Job("map", int, ["1", "x", "3"], sink, length=3, chunksize=3))
    be.drain()
    ok, err = sink.outcomes[1]
    assert not ok and isinstance(err, ValueError)
    assert "(raised by task 1 of map() in worker pid 4242)" in err.__notes__


# ==================================================================== functions


def test_functions_are_pickled_once_with_the_given_dumps():
    calls = []

    def dumps(func):
        calls.append(func)
        return pickle.dumps(func)

    be = FakeBackend(1, dumps=dumps)
    for _ in range(2):
        job, _sink = map_job(3, chunksize=1)
        be.scheduler.submit(job)
    known: set[int] = set()
    for _ in range(3):
        batch = be.take()
        msg = be.scheduler.batch_message(batch, set())  # a worker that knows nothing
        assert pickle.loads(msg[1][batch.job.fid]) is double
        be.finish(batch)
    assert calls == [double]  # one blob, cached for the module-level function
    batch = be.take()
    msg = be.scheduler.batch_message(batch, known)
    learn_funcs(known, msg[1])
    assert known == {batch.job.fid}
    assert be.scheduler.batch_message(batch, known)[1] == {}  # known: not sent again


def test_closure_is_released_when_its_job_finishes_and_workers_drop_it():
    be = FakeBackend(1)
    offset = 10

    def closure(x):
        return x + offset

    known: set[int] = set()
    sink = Recorder()
    be.scheduler.submit(Job("map", closure, range(3), sink, length=3, chunksize=3))
    batch = be.take()
    fid = batch.job.fid
    msg = be.scheduler.batch_message(batch, known)
    assert msg[1][fid] is not None
    learn_funcs(known, msg[1])
    be.finish(batch)
    assert sink.values() == [10, 11, 12]
    assert fid in be.scheduler.released_fids
    ref = weakref.ref(closure)
    del closure, batch, msg
    sink.outcomes.clear()
    gc.collect()
    assert ref() is None, "the scheduler still holds the finished job's closure"
    # The next batch sent to that worker tells it to drop the closure (a None entry).
    job, _sink = map_job(1)
    be.scheduler.submit(job)
    batch = be.take()
    msg = be.scheduler.batch_message(batch, known)
    assert msg[1][fid] is None and msg[1][job.fid] is not None
    learn_funcs(known, msg[1])
    assert known == {job.fid}
    be.finish(batch)
    assert job.fid not in be.scheduler.released_fids  # module-level: stays cached


def test_mixed_batch_message_carries_each_function_once():
    be = FakeBackend(1)
    job, _sink = apply_job(add, (0, 0))
    be.scheduler.submit(job)
    be.drain(10)  # the cost of add() is known now: calls queued behind one are packed
    sinks = []
    for i in range(4):
        job, sink = apply_job(add, (i, 1)) if i % 2 == 0 else apply_job(double, (i,))
        be.scheduler.submit(job)
        sinks.append(sink)
    batch = be.take()
    msg = be.scheduler.batch_message(batch, set())
    assert msg[2] == sched_mod.MIXED and len(batch) == 4
    assert len(msg[1]) == 2 and set(msg[1]) == {job.fid for job in batch.jobs}
    be.finish(batch, 10)
    assert [s.outcomes[0][1] for s in sinks] == [1, 2, 3, 6]


# ==================================================================== the Backend interface


def _members(protocol):
    methods = {name for name, value in vars(protocol).items()
               if callable(value) and not name.startswith("_")}
    attributes = set(typing.get_type_hints(protocol, localns={"Scheduler": Scheduler}))
    return methods, attributes


def _dask_backend_class():
    from polyproc._backends.dask.driver import DaskBackend

    return DaskBackend


@pytest.mark.parametrize("cls", [LocalBackend, ThreadBackend, "dask"],
                         ids=["local", "threads", "dask"])
def test_every_backend_class_has_the_backend_methods(cls):
    if cls == "dask":
        cls = _dask_backend_class()
    methods, attributes = _members(Backend)
    assert methods == {"wakeup", "close", "terminate", "join", "worker_pids", "stop_job"}
    assert attributes == {"scheduler", "thread"}
    for name in methods:
        impl = getattr(cls, name, None)
        assert callable(impl), f"{cls.__name__} lacks {name}()"
        want = [p for p in inspect.signature(getattr(Backend, name)).parameters]
        got = [p for p in inspect.signature(impl).parameters]
        assert got[:len(want)] == want, f"{cls.__name__}.{name}{inspect.signature(impl)}"
    init = inspect.getsource(cls.__init__)
    for name in attributes:  # set by the constructor
        assert f"self.{name} =" in init, f"{cls.__name__} never sets {name}"


def test_thread_and_local_backends_are_backends():
    with polyproc.pool.ThreadPool(1) as pool:
        assert isinstance(pool._backend, Backend)
        assert pool._backend.worker_pids() == []
    with polyproc.get_context("fork").Pool(1) as pool:
        assert isinstance(pool._backend, Backend)
        assert pool._backend.worker_pids() and pool.apply(add, (1, 2)) == 3


class _FactoryContext:
    """A context with a backend of its own (as the dask context has)."""

    def __init__(self) -> None:
        self.calls = []

    def _backend_factory(self, processes, initializer, initargs, maxtasks, name):
        self.calls.append((processes, initializer, initargs, maxtasks, name))
        return ThreadBackend(processes, initializer, initargs)


def test_both_faces_choose_their_backend_with_make_backend():
    ctx = _FactoryContext()
    with polyproc.pool.Pool(2, context=ctx) as pool:
        assert pool.map(double, range(5)) == [0, 2, 4, 6, 8]
    with polyproc.futures.ProcessPoolExecutor(3, mp_context=ctx, initargs=(1,),
                                              initializer=int) as ex:
        assert ex.submit(add, 2, 3).result(timeout=10) == 5
    assert ctx.calls == [(2, None, (), None, "PoolWorker"),
                         (3, int, (1,), None, "ProcessPoolWorker")]
    backend = make_backend(ctx, 1)
    try:
        assert isinstance(backend, ThreadBackend)
    finally:
        backend.close()
        assert backend.join(10)
