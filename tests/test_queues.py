"""Tests of polyproc.queues: Queue, JoinableQueue, SimpleQueue (API, children under every
start method, many producers/consumers, put-time pickling, large messages, differential
tests against the stdlib, and processes SIGKILLed while they hold a queue's lock)."""

from __future__ import annotations

import collections
import os
import pickle
import signal
import threading
import time
from queue import Empty, Full

import pytest

import polyproc
from _scripts import run_script
from polyproc import queues
from polyproc._resources import ring as ringmod

METHODS = ["fork", "spawn", "forkserver"]
SMALL_RING = 64 * 1024  # a ring small enough that big messages are streamed
MIB = 1 << 20

pytestmark = pytest.mark.timeout(90)


def wait_until(predicate, timeout=20.0, what="condition"):
    """Poll ``predicate`` with a deadline (for state another process changes)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


# ---------------------------------------------------------------- child targets (module level)


def produce(q, start, count, done=None):
    for i in range(start, start + count):
        q.put(i)
    if done is not None:
        done.set()


def consume(q, count, out):
    got = [q.get(timeout=30) for _ in range(count)]
    out.put(got)


def consume_until_none(q, out):
    got = []
    while True:
        x = q.get(timeout=60)
        if x is None:
            break
        got.append(x)
    out.put(got)


def echo(inq, outq):
    while True:
        x = inq.get(timeout=30)
        outq.put(x)
        if x is None:
            break


def put_big_then_exit(q, payloads):
    for p in payloads:
        q.put(p)


def joinable_worker(q, results):
    while True:
        x = q.get(timeout=30)
        if x is None:
            q.task_done()
            break
        results.put(x * x)
        q.task_done()


def hold_lock_forever(q, which, ready):
    ring = q._ring
    lock = ring.wlock if which == "write" else ring.rlock
    lock.acquire()
    ready.set()
    while True:
        time.sleep(1)


def put_forever(q, ready):
    i = 0
    ready.set()
    while True:
        q.put(("item", i, b"x" * (i % 200)))
        i += 1


def get_forever(q, ready):
    ready.set()
    while True:
        try:
            q.get(timeout=0.5)
        except Empty:
            pass


def simple_producer(q, items):
    for x in items:
        q.put(x)


def grandparent(q, method):
    ctx = polyproc.get_context(method)
    p = ctx.Process(target=produce, args=(q, 100, 3))
    p.start()
    p.join()


# ---------------------------------------------------------------- API, in one process


@pytest.mark.parametrize("cls", [queues.Queue, queues.JoinableQueue])
def test_fifo_and_nowait(cls):
    q = cls()
    assert q.empty() and q.qsize() == 0 and not q.full()
    for i in range(100):
        q.put(i)
    assert not q.empty()
    assert q.qsize() == 100
    assert [q.get() for _ in range(50)] == list(range(50))
    assert [q.get_nowait() for _ in range(50)] == list(range(50, 100))
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(False)
    assert q.empty()


def test_get_timeout():
    q = queues.Queue()
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 5
    with pytest.raises(Empty):
        q.get(timeout=0)
    with pytest.raises(Empty):
        q.get(True, -1)


def test_bounded_blocks_with_timeout():
    q = queues.Queue(2)
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    with pytest.raises(Full):
        q.put_nowait(3)
    t0 = time.monotonic()
    with pytest.raises(Full):
        q.put(3, timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 5
    with pytest.raises(Full):
        q.put(3, block=False)
    assert q.get() == 1
    q.put(3, timeout=1)
    assert [q.get(), q.get()] == [2, 3]
    assert q.empty() and not q.full()


def test_bounded_put_unblocked_by_getter_thread():
    q = queues.Queue(1)
    q.put("a")
    started = threading.Event()
    result = []

    def blocked_put():
        started.set()
        q.put("b")  # blocks until the main thread gets "a"
        result.append("put")

    t = threading.Thread(target=blocked_put)
    t.start()
    started.wait(10)
    assert q.get(timeout=10) == "a"
    t.join(10)
    assert result == ["put"]
    assert q.get(timeout=10) == "b"


def test_put_time_pickling():
    q = queues.Queue()
    data = [1, 2, 3]
    q.put(data)
    data.append(4)  # must not change what was put
    assert q.get(timeout=5) == [1, 2, 3]
    with pytest.raises(TypeError):
        q.put(threading.Lock())  # unpicklable: raises in put
    assert q.empty()
    q.put("after")
    assert q.get(timeout=5) == "after"
    # lambdas travel by value (cloudpickle), like polyproc's Process targets
    q.put(lambda x: x + 1)
    assert q.get(timeout=5)(1) == 2


def test_unpickling_error_consumes_message():
    q = queues.Queue()
    q.put(Unloadable())
    q.put("next")
    with pytest.raises(RuntimeError, match="cannot load"):
        q.get(timeout=5)
    assert q.get(timeout=5) == "next"


class Unloadable:
    def __reduce__(self):
        return (_fail_load, ())


def _fail_load():
    raise RuntimeError("cannot load")


def test_close_and_join_thread():
    q = queues.Queue()
    with pytest.raises(AssertionError):
        q.join_thread()
    q.put(1)
    q.close()
    q.join_thread()
    with pytest.raises(ValueError):
        q.put(2)
    with pytest.raises(ValueError):
        q.get()
    q.close()  # twice is fine


def test_feeder_flushes_on_close():
    q = queues.Queue(_capacity=SMALL_RING)
    items = [b"%d" % i * 100 for i in range(2000)]  # more than the ring holds: feeder
    for x in items:
        q.put(x)
    assert q._thread is not None
    got = [q.get(timeout=10) for _ in items]
    assert got == items
    q.close()
    q.join_thread()


def test_cancel_join_thread():
    q = queues.Queue()
    q.cancel_join_thread()
    q.put(1)
    q.close()
    q.join_thread()  # nothing to wait for
    q2 = queues.Queue(_capacity=SMALL_RING)
    for _ in range(200):
        q2.put(b"x" * 1000)
    q2.cancel_join_thread()
    assert q2._jointhread is None or not q2._jointhread.still_active()


def test_large_messages_in_process():
    q = queues.Queue(_capacity=SMALL_RING)
    big = os.urandom(MIB)
    obj = {"a": list(range(20000)), "b": big}
    q.put(big)
    q.put("small")
    q.put(obj)
    assert q.get(timeout=20) == big
    assert q.get(timeout=20) == "small"
    assert q.get(timeout=20) == obj


def test_messages_near_half_ring_and_wrapping():
    q = queues.Queue(_capacity=SMALL_RING)
    sizes = [1, 100, 5000, SMALL_RING // 2 - 100, SMALL_RING // 2 + 100, 3, 40000, 0]
    for rnd in range(5):
        msgs = [bytes([rnd]) * s for s in sizes]
        for m in msgs:
            q.put(m)
        assert [q.get(timeout=20) for _ in msgs] == msgs


def test_threads_many_producers_consumers():
    q = queues.Queue(_capacity=SMALL_RING)
    n_prod, per = 4, 2000
    got: list[int] = []
    lock = threading.Lock()

    def consumer():
        while True:
            x = q.get(timeout=30)
            if x is None:
                return
            with lock:
                got.append(x)

    consumers = [threading.Thread(target=consumer) for _ in range(3)]
    producers = [threading.Thread(target=produce, args=(q, k * per, per)) for k in range(n_prod)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join(60)
    for _ in consumers:
        q.put(None)
    for t in consumers:
        t.join(60)
    assert sorted(got) == list(range(n_prod * per))


def test_joinable_queue_in_process():
    q = queues.JoinableQueue()
    q.join()  # nothing put: returns at once
    with pytest.raises(ValueError, match="task_done\\(\\) called too many times"):
        q.task_done()
    for i in range(3):
        q.put(i)
    done = threading.Event()

    def joiner():
        q.join()
        done.set()

    t = threading.Thread(target=joiner)
    t.start()
    for _ in range(3):
        q.get(timeout=5)
    assert not done.is_set()
    q.task_done()
    q.task_done()
    assert not done.wait(0.05)
    q.task_done()
    assert done.wait(10)
    t.join(10)
    with pytest.raises(ValueError):
        q.task_done()


def test_simple_queue_api():
    q = queues.SimpleQueue()
    assert q.empty()
    q.put({"x": 1})
    q.put(None)
    assert not q.empty()
    assert q.get() == {"x": 1}
    assert q.get() is None
    assert q.empty()
    q.close()
    with pytest.raises(OSError):
        q.put(1)
    with pytest.raises(OSError):
        q.get()


def _closed_queue_behaviour(mp):
    """What each call does on closed queues of the module ``mp`` (result or exception)."""

    def outcome(f):
        try:
            return ("ok", f())
        except Exception as e:  # noqa: BLE001 - the exception is the observation
            return (type(e).__name__, str(e) if isinstance(e, OSError) else "")

    seen = {}
    for cls in ("Queue", "JoinableQueue"):
        for used in (False, True):
            q = getattr(mp, cls)(2)
            if used:
                q.put("foo")
            q.close()
            q.join_thread()
            for name, f in [("empty", q.empty), ("full", q.full), ("qsize", q.qsize),
                            ("get", lambda q=q: q.get(timeout=0.1)), ("put", lambda q=q: q.put(1))]:
                seen[(cls, used, name)] = outcome(f)
    sq = mp.SimpleQueue()
    sq.close()
    for name, f in [("empty", sq.empty), ("get", sq.get), ("put", lambda: sq.put(1))]:
        seen[("SimpleQueue", True, name)] = outcome(f)
    return seen


def test_closed_queues_behave_like_the_stdlibs():
    # Queue.empty() after put and close, and SimpleQueue.empty() after close, raise
    # OSError('handle is closed') (the stdlib's pipe is closed then; 3.13's suite checks it).
    import multiprocessing

    ours = _closed_queue_behaviour(polyproc)
    assert ours == _closed_queue_behaviour(multiprocessing)
    assert ours[("Queue", True, "empty")] == ("OSError", "handle is closed")
    assert ours[("Queue", False, "empty")] == ("ok", True)
    assert ours[("SimpleQueue", True, "empty")] == ("OSError", "handle is closed")


def test_simple_queue_large_in_threads():
    q = queues.SimpleQueue(_capacity=SMALL_RING)
    big = os.urandom(MIB // 2)
    t = threading.Thread(target=simple_producer, args=(q, [big, 1, big]))
    t.start()
    assert q.get() == big
    assert q.get() == 1
    assert q.get() == big
    t.join(10)


def test_context_factories_and_module_names():
    for method in METHODS:
        ctx = polyproc.get_context(method)
        for q in (ctx.Queue(), ctx.JoinableQueue(3), ctx.SimpleQueue()):
            q.put(method)
            assert q.get() == method
    assert isinstance(polyproc.Queue(), queues.Queue)
    assert queues.Queue[int] is not None  # generic alias, like the stdlib
    q = queues.Queue(ctx=polyproc.get_context("spawn"))
    q.put(1)
    assert q.get() == 1


def test_not_picklable_outside_process_start():
    for q in (queues.Queue(), queues.SimpleQueue(), queues.JoinableQueue()):
        with pytest.raises(RuntimeError, match="inheritance"):
            pickle.dumps(q)


def test_ring_counts_and_recovery_tokens():
    r = ringmod.Ring.create(SMALL_RING)
    assert r.empty() and r.counts() == (0, 0)
    get = r.make_get(pickle.loads, Empty)
    assert r.try_send(pickle.dumps("a"), 0.0)
    assert r.counts() == (1, 0)
    assert get(False) == "a"
    assert r.counts() == (1, 1) and r.empty()
    # a surplus token (as posted after a writer's death) only causes a spurious wake-up
    r.items.release()
    with pytest.raises(Empty):
        get(True, 0.1)
    # a missing token (writer died between commit and post): the record is still read
    r.wlock.acquire()
    assert r.put_nowait(pickle.dumps("b"))
    r.wlock.release()
    assert get(True, 1) == "b"



def reap(p, timeout=30.0):
    """Join ``p``, killing it if it has not exited within ``timeout`` seconds."""
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()


def get_lengths(q, out, count):
    for _ in range(count):
        out.put(len(q.get()))


def test_streamed_messages_wake_the_waiting_writer(monkeypatch):
    # A message larger than half the ring is streamed in chunks while its writer holds the
    # write lock waiting for space; the reader must post that space chunk by chunk. With the
    # wait slice at 60 s, a writer left to notice by itself would blow the deadline.
    monkeypatch.setattr(ringmod, "_SLICE", 60.0)
    ctx = polyproc.get_context("fork")
    q = queues.Queue(ctx=ctx, _capacity=8192)
    out = ctx.Queue()
    count = 12
    p = ctx.Process(target=get_lengths, args=(q, out, count))
    p.start()
    try:
        for i in range(count):
            q.put(bytes([i]) * 9000)  # > half the ring: streamed
        assert [out.get(timeout=20) for _ in range(count)] == [9000] * count
    finally:
        reap(p)
    assert p.exitcode == 0


def ping_pong_echo(inq, outq, count):
    for _ in range(count):
        outq.put(inq.get())


def test_no_lost_wakeup_between_sleeping_reader_and_writer(monkeypatch):
    # Readers sleep on a token that writers post only when ``rwait`` is set; a lost wake-up
    # would cost a whole wait slice. With the slice at 60 s (inherited by the forked child),
    # each of these round trips (both sides sleep in get) would then blow the deadline.
    monkeypatch.setattr(ringmod, "_SLICE", 60.0)
    monkeypatch.setattr(ringmod, "_SPIN", 0)  # sleep at once: every message races a sleeper
    ctx = polyproc.get_context("fork")
    inq, outq = ctx.Queue(), ctx.Queue()
    count = 2000
    p = ctx.Process(target=ping_pong_echo, args=(inq, outq, count))
    p.start()
    deadline = time.monotonic() + 30
    try:
        for i in range(count):
            inq.put(i)
            assert outq.get(timeout=max(0.01, deadline - time.monotonic())) == i
    finally:
        reap(p)
    assert p.exitcode == 0

# ---------------------------------------------------------------- children, all start methods


@pytest.mark.parametrize("method", METHODS)
def test_child_producer_and_consumer(method):
    ctx = polyproc.get_context(method)
    q, out = ctx.Queue(), ctx.Queue()
    consumer = ctx.Process(target=consume, args=(q, 300, out))
    producer = ctx.Process(target=produce, args=(q, 0, 300))
    consumer.start()
    producer.start()
    assert out.get(timeout=60) == list(range(300))
    producer.join(30)
    consumer.join(30)
    assert producer.exitcode == 0 and consumer.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_simple_and_joinable_in_children(method):
    ctx = polyproc.get_context(method)
    sq = ctx.SimpleQueue()
    p = ctx.Process(target=simple_producer, args=(sq, ["a", ("b", 2), None]))
    p.start()
    assert [sq.get(), sq.get(), sq.get()] == ["a", ("b", 2), None]
    p.join(30)
    jq, results = ctx.JoinableQueue(), ctx.Queue()
    w = ctx.Process(target=joinable_worker, args=(jq, results))
    w.start()
    for i in range(20):
        jq.put(i)
    jq.join()  # every item marked done by the worker
    assert sorted(results.get(timeout=10) for _ in range(20)) == [i * i for i in range(20)]
    jq.put(None)
    jq.join()
    w.join(30)
    assert w.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_large_messages_across_processes(method):
    ctx = polyproc.get_context(method)
    q = queues.Queue(_capacity=SMALL_RING, ctx=ctx)
    back = queues.Queue(_capacity=SMALL_RING, ctx=ctx)
    p = ctx.Process(target=echo, args=(q, back))
    p.start()
    payloads = [os.urandom(MIB), b"tiny", os.urandom(3 * SMALL_RING + 17), list(range(30000))]
    for x in payloads:
        q.put(x)
    q.put(None)
    assert [back.get(timeout=60) for _ in range(len(payloads) + 1)] == payloads + [None]
    p.join(30)
    assert p.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_child_puts_then_exits_nothing_lost(method):
    ctx = polyproc.get_context(method)
    # more than the ring holds: the child's feeder still has messages when its main
    # function returns, and its exit waits for them to be written.
    q = queues.Queue(_capacity=SMALL_RING, ctx=ctx)
    payloads = [bytes([i % 256]) * 5000 for i in range(100)] + [os.urandom(200_000)]
    p = ctx.Process(target=put_big_then_exit, args=(q, payloads))
    p.start()
    got = [q.get(timeout=60) for _ in payloads]
    p.join(30)
    assert p.exitcode == 0
    assert got == payloads


def test_join_child_before_reading_small_messages():
    # Messages that fit in the ring are written by put itself: the child can exit (and be
    # joined) before anyone reads them.
    ctx = polyproc.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=produce, args=(q, 0, 1000))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert [q.get(timeout=5) for _ in range(1000)] == list(range(1000))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_many_producers_many_consumers_exactly_once(method):
    ctx = polyproc.get_context(method)
    q, out = ctx.Queue(maxsize=50), ctx.Queue()
    n_prod, n_cons, per = 3, 3, 1500
    producers = [ctx.Process(target=produce, args=(q, k * per, per)) for k in range(n_prod)]
    consumers = [ctx.Process(target=consume_until_none, args=(q, out)) for _ in range(n_cons)]
    for p in consumers + producers:
        p.start()
    for p in producers:
        p.join(60)
    for _ in consumers:
        q.put(None)
    results = [out.get(timeout=60) for _ in consumers]
    for p in consumers:
        p.join(30)
    everything = [x for r in results for x in r]
    counts = collections.Counter(everything)
    assert len(everything) == n_prod * per
    assert set(counts) == set(range(n_prod * per))
    assert max(counts.values()) == 1
    # per-producer FIFO order holds within each consumer's share
    for r in results:
        for k in range(n_prod):
            mine = [x for x in r if k * per <= x < (k + 1) * per]
            assert mine == sorted(mine)


def test_queue_passed_to_grandchild():
    ctx = polyproc.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=grandparent, args=(q, "spawn"))
    p.start()
    assert [q.get(timeout=60) for _ in range(3)] == [100, 101, 102]
    p.join(30)
    assert p.exitcode == 0


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("which", ["write", "read"])
def test_sigkill_while_holding_lock(which, no_leaks):
    ctx = polyproc.get_context("fork")
    q = ctx.Queue()
    q.put("before")
    ready = _PipeEvent()
    p = ctx.Process(target=hold_lock_forever, args=(q, which, ready))
    p.start()
    assert ready.wait(30)
    if which == "read":
        t0 = time.monotonic()
        with pytest.raises(Empty):
            q.get(timeout=0.3)  # a live holder: waits, then gives up in time
        assert time.monotonic() - t0 < 5
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    # the lock is recovered: nothing hangs, nothing is lost
    q.put("after")
    assert q.get(timeout=10) == "before"
    assert q.get(timeout=10) == "after"
    with pytest.raises(Empty):
        q.get(timeout=0.2)


def test_sigkill_in_put_loop(no_leaks):
    ctx = polyproc.get_context("fork")
    for round_ in range(4):
        q = queues.Queue(_capacity=SMALL_RING, ctx=ctx)
        ready = _PipeEvent()
        p = ctx.Process(target=put_forever, args=(q, ready))
        p.start()
        assert ready.wait(30)
        got = [q.get(timeout=30) for _ in range(300 + 500 * round_)]
        os.kill(p.pid, signal.SIGKILL)  # somewhere in put(), maybe holding the write lock
        p.join(30)
        while True:
            try:
                got.append(q.get(timeout=0.5))
            except Empty:
                break
        # what arrived is a prefix of what was put, intact and in order
        assert [g[1] for g in got] == list(range(len(got)))
        assert all(g[2] == b"x" * (g[1] % 200) for g in got)
        q.put("alive")
        assert q.get(timeout=5) == "alive"


def test_sigkill_in_get_loop(no_leaks):
    ctx = polyproc.get_context("fork")
    q = ctx.Queue()
    for _ in range(3):
        ready = _PipeEvent()
        p = ctx.Process(target=get_forever, args=(q, ready))
        p.start()
        assert ready.wait(30)
        for i in range(2000):
            q.put(i)
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        while True:  # drain what the dead consumer left
            try:
                q.get(timeout=0.2)
            except Empty:
                break
        q.put("alive")
        assert q.get(timeout=5) == "alive"


def test_sigkill_mid_stream(no_leaks):
    ctx = polyproc.get_context("fork")
    q = queues.Queue(_capacity=SMALL_RING, ctx=ctx)
    p = ctx.Process(target=put_big_then_exit, args=(q, [os.urandom(MIB)]))
    p.start()
    # the child's feeder streams the message and waits for room, holding the write lock
    wait_until(lambda: q._ring.writer_waiting() and not q.empty(), what="a blocked stream")
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=1)  # reads the first chunks, finds the writer gone, drops them
    assert time.monotonic() - t0 < 10
    q.put("next")
    assert q.get(timeout=5) == "next"


class _PipeEvent:
    """A one-shot event over a pipe (works under fork without polyproc.synchronize)."""

    def __init__(self):
        self.r, self.w = os.pipe()

    def set(self):
        os.write(self.w, b"x")

    def wait(self, timeout):
        import select

        return bool(select.select([self.r], [], [], timeout)[0])

    def __del__(self):
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


# ---------------------------------------------------------------- differential


DIFF_PROGRAM = """
import sys, os
import {lib} as mp
from queue import Empty, Full

def worker(q, out):
    total = 0
    while True:
        x = q.get()
        if x is None:
            break
        total += x
    out.put(('total', total))

def jworker(jq, out):
    while True:
        x = jq.get()
        out.put(x * 10)
        jq.task_done()
        if x is None or x < 0:
            break

def sq_worker(sq_in, sq_out):
    while True:
        x = sq_in.get()
        sq_out.put(x if x is None else (x, len(x)))
        if x is None:
            break

if __name__ == '__main__':
    ctx = mp.get_context({method!r})
    q, out = ctx.Queue(), ctx.Queue()
    ps = [ctx.Process(target=worker, args=(q, out)) for _ in range(2)]
    for p in ps: p.start()
    for i in range(1000): q.put(i)
    for p in ps: q.put(None)
    totals = sorted(out.get(timeout=60) for p in ps)
    print('sum', sum(t for _, t in totals))
    for p in ps: p.join()
    print('exitcodes', [p.exitcode for p in ps])

    b = ctx.Queue(2)
    b.put('a'); b.put('b')
    print('full', b.full(), b.qsize())
    try:
        b.put('c', timeout=0.1)
    except Full:
        print('Full raised')
    print(b.get(), b.get())
    try:
        b.get(timeout=0.1)
    except Empty:
        print('Empty raised')
    try:
        b.get_nowait()
    except Empty:
        print('Empty raised nowait')
    b.close()
    try:
        b.put('x')
    except ValueError:
        print('put on closed: ValueError')
    b.join_thread()

    jq, jout = ctx.JoinableQueue(), ctx.Queue()
    jp = ctx.Process(target=jworker, args=(jq, jout))
    jp.start()
    for i in [1, 2, 3, -1]:
        jq.put(i)
    jq.join()
    print('joinable', [jout.get(timeout=30) for _ in range(4)])
    try:
        jq.task_done()
    except ValueError as e:
        print('task_done error', e)
    jp.join()

    sin, sout = ctx.SimpleQueue(), ctx.SimpleQueue()
    sp = ctx.Process(target=sq_worker, args=(sin, sout))
    sp.start()
    for s in ['x', 'yy', 'z' * 300000, None]:
        sin.put(s)
    res = [sout.get() for _ in range(4)]
    print('simple', [r if r is None else (r[0][:3], r[1]) for r in res], sout.empty())
    sp.join()
    big = ctx.Queue()
    data = bytes(range(256)) * 20000
    big.put(data); big.put([1, 'two', 3.0, None, (4,)])
    print('big', big.get(timeout=30) == data, big.get(timeout=30))
    mutable = [1, 2]
    big.put(mutable)
    print('got mutable', big.get(timeout=30))
"""


@pytest.mark.parametrize("method", METHODS)
def test_differential_against_stdlib(tmp_path, method):
    outputs = {}
    for lib in ("multiprocessing", "polyproc"):
        res = run_script(tmp_path, DIFF_PROGRAM.format(lib=lib, method=method),
                         name=f"{lib}_{method}.py", timeout=120)
        assert res.returncode == 0, res.stderr
        outputs[lib] = res.stdout
    assert outputs["polyproc"] == outputs["multiprocessing"]
    assert "sum 499500" in outputs["polyproc"]


INTERACTIVE_MAIN = """
import polyproc as mp

class Point:
    def __init__(self, x):
        self.x = x

def child(q):
    q.put(Point(3))
    q.put((1, 'a'))
    q.put(lambda: 5)

if __name__ == '__main__':
    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    pt = q.get(timeout=60)
    print(type(pt).__name__, pt.x, q.get(timeout=60), q.get(timeout=60)())
    q2 = ctx.Queue()
    q2.put(Point(4))
    print(q2.get(timeout=60).x)
    p.join()
"""


def test_objects_of_a_main_module_run_with_dash_c():
    # ``python -c``: __main__ cannot be imported by children, so its classes and functions
    # must travel by value (cloudpickle); everything else keeps the fast pickler.
    import subprocess
    import sys

    from _scripts import SRC

    env = dict(os.environ, PYTHONPATH=SRC)
    res = subprocess.run([sys.executable, "-c", INTERACTIVE_MAIN], capture_output=True,
                         text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["Point 3 (1, 'a') 5", "4"]
