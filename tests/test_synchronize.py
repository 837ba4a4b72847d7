"""polyproc.synchronize: each primitive across processes under every start method, the stdlib's
errors on misuse, differential runs against the stdlib, and a SIGKILLed lock holder."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time

import pytest

import polyproc
from _scripts import run_script
from polyproc import synchronize

METHODS = ["fork", "spawn", "forkserver"]
T = 30.0  # deadline for waits that must succeed; they normally take milliseconds


# -- targets (module level, so spawn/forkserver children can import them)

def incr_counter(lock, path, n):
    for _ in range(n):
        with lock:
            with open(path) as f:
                value = int(f.read())
            with open(path, "w") as f:
                f.write(str(value + 1))


def hold_rlock(rlock, held, release_ev):
    rlock.acquire()
    rlock.acquire()
    held.release()
    if not release_ev.wait(T):
        sys.exit(2)
    rlock.release()
    rlock.release()


def sem_worker(sem, entered, go):
    if not sem.acquire(timeout=T):
        sys.exit(2)
    entered.release()
    if not go.wait(T):
        sys.exit(3)
    sem.release()


def over_release(bsem):
    with bsem:
        pass
    try:
        bsem.release()
    except ValueError as e:
        sys.exit(0 if str(e) == "semaphore or lock released too many times" else 4)
    sys.exit(5)


def append_line(path, text):
    with open(path, "a") as f:
        f.write(f"{text}\n")


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


def cond_waiter(cond, ready, path):
    with cond:
        ready.release()
        woke = cond.wait(T)
    append_line(path, "woke" if woke else "timeout")


def cond_consumer(cond, path, n, out):
    got = []
    with cond:
        while len(got) < n:
            if not cond.wait_for(lambda seen=len(got): len(read_lines(path)) > seen, T):
                sys.exit(2)
            got = read_lines(path)
    append_line(out, " ".join(got))


def event_waiter(ev, ack):
    if not ev.wait(T) or not ev.is_set():
        sys.exit(2)
    ack.release()


def barrier_party(barrier, path, rounds):
    for _ in range(rounds):
        append_line(path, barrier.wait(T))


def barrier_expect_broken(barrier, path):
    try:
        barrier.wait(T)
    except threading.BrokenBarrierError:
        append_line(path, "broken")


def hold_lock_forever(lock, held):
    lock.acquire()
    held.release()
    while True:
        time.sleep(0.05)


def pass_lock_on(lock, path, method):
    ctx = polyproc.get_context(method)
    p = ctx.Process(target=incr_counter, args=(lock, path, 5))
    p.start()
    p.join(T)
    sys.exit(p.exitcode)


def check_rlock_after_fork(rlock, path):
    append_line(path, repr(rlock).replace(" ", ""))
    append_line(path, rlock.acquire(timeout=0.01))


def noop(*args):
    pass


# -- helpers

def start(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


def join_all(procs):
    """Join with a deadline; kill stragglers so a failing test leaves no process behind."""
    deadline = time.monotonic() + T
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in procs]


@pytest.fixture
def children():
    """A list to put started processes in; whatever is still running at the end is killed."""
    procs = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()


# -- across processes, every start method

@pytest.mark.parametrize("method", METHODS)
def test_lock_serializes_increments(tmp_path, method, children):
    ctx = polyproc.get_context(method)
    lock = ctx.Lock()
    path = tmp_path / "counter"
    path.write_text("0")
    children += [start(ctx, incr_counter, lock, str(path), 100) for _ in range(3)]
    assert join_all(children) == [0, 0, 0]
    assert path.read_text() == "300"
    assert repr(lock) == "<Lock(owner=None)>"


@pytest.mark.parametrize("method", METHODS)
def test_rlock_owned_by_other_process(method, children):
    ctx = polyproc.get_context(method)
    rlock, held, release_ev = ctx.RLock(), ctx.Semaphore(0), ctx.Event()
    children.append(start(ctx, hold_rlock, rlock, held, release_ev))
    assert held.acquire(timeout=T)
    assert repr(rlock) == "<RLock(SomeOtherProcess, nonzero)>"
    assert not rlock.acquire(timeout=0.05)
    with pytest.raises(AssertionError, match="not owned by thread"):
        rlock.release()
    release_ev.set()
    assert rlock.acquire(timeout=T)
    assert rlock.acquire(timeout=0)  # recursive
    assert repr(rlock) == "<RLock(MainProcess, 2)>"
    rlock.release()
    rlock.release()
    assert join_all(children) == [0]


@pytest.mark.parametrize("method", METHODS)
def test_semaphore_limits_concurrency(method, children):
    ctx = polyproc.get_context(method)
    sem, entered, go = ctx.Semaphore(2), ctx.Semaphore(0), ctx.Event()
    children += [start(ctx, sem_worker, sem, entered, go) for _ in range(3)]
    assert entered.acquire(timeout=T)
    assert entered.acquire(timeout=T)
    assert not entered.acquire(timeout=0.2)  # the third worker is held back
    assert sem.get_value() == 0
    go.set()
    assert join_all(children) == [0, 0, 0]
    assert entered.get_value() == 1
    assert sem.get_value() == 2
    assert repr(sem) == "<Semaphore(value=2)>"


@pytest.mark.parametrize("method", METHODS)
def test_bounded_semaphore_over_release_in_child(method, children):
    ctx = polyproc.get_context(method)
    bsem = ctx.BoundedSemaphore(2)
    children.append(start(ctx, over_release, bsem))
    assert join_all(children) == [0]
    assert bsem.get_value() == 2
    assert repr(bsem) == "<BoundedSemaphore(value=2, maxvalue=2)>"


@pytest.mark.parametrize("method", METHODS)
def test_condition_notify_and_notify_all(tmp_path, method, children):
    ctx = polyproc.get_context(method)
    cond, ready = ctx.Condition(), ctx.Semaphore(0)
    path = str(tmp_path / "woken")
    children += [start(ctx, cond_waiter, cond, ready, path) for _ in range(3)]
    for _ in range(3):
        assert ready.acquire(timeout=T)
    # Each waiter held the lock when it signalled `ready`, so once we hold it they all wait.
    with cond:
        assert repr(cond) == "<Condition(<RLock(MainProcess, 1)>, 3)>"
        cond.notify()
    deadline = time.monotonic() + T
    while len(read_lines(path)) < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert read_lines(path) == ["woke"]
    with cond:
        cond.notify_all()
    assert join_all(children) == [0, 0, 0]
    assert read_lines(path) == ["woke"] * 3


@pytest.mark.parametrize("method", METHODS)
def test_condition_producer_consumer(tmp_path, method, children):
    ctx = polyproc.get_context(method)
    cond = ctx.Condition(ctx.Lock())
    items, out = str(tmp_path / "items"), str(tmp_path / "out")
    children.append(start(ctx, cond_consumer, cond, items, 5, out))
    for i in range(5):
        with cond:
            append_line(items, i)
            cond.notify()
    assert join_all(children) == [0]
    with open(out) as f:
        assert f.read() == "0 1 2 3 4\n"


@pytest.mark.parametrize("method", METHODS)
def test_event_wakes_waiters(method, children):
    ctx = polyproc.get_context(method)
    ev, ack = ctx.Event(), ctx.Semaphore(0)
    assert not ev.is_set()
    assert ev.wait(0.01) is False
    children += [start(ctx, event_waiter, ev, ack) for _ in range(2)]
    ev.set()
    assert ev.is_set() and ev.wait() is True
    assert join_all(children) == [0, 0]
    assert ack.get_value() == 2
    ev.clear()
    assert not ev.is_set()
    assert repr(ev).endswith(" unset>")


@pytest.mark.parametrize("method", METHODS)
def test_barrier_indices_and_action(tmp_path, method, children):
    ctx = polyproc.get_context(method)
    path, actions = str(tmp_path / "idx"), str(tmp_path / "actions")
    barrier = ctx.Barrier(3, action=functools.partial(append_line, actions, "action"))
    assert (barrier.parties, barrier.n_waiting, barrier.broken) == (3, 0, False)
    children += [start(ctx, barrier_party, barrier, path, 2) for _ in range(2)]
    mine = [barrier.wait(T), barrier.wait(T)]
    assert join_all(children) == [0, 0]
    indices = [int(x) for x in read_lines(path)] + mine
    assert sorted(indices) == [0, 0, 1, 1, 2, 2]
    assert read_lines(actions) == ["action", "action"]
    assert barrier.n_waiting == 0 and not barrier.broken


@pytest.mark.parametrize("method", METHODS)
def test_barrier_abort_breaks_waiting_process(tmp_path, method, children):
    ctx = polyproc.get_context(method)
    barrier = ctx.Barrier(2)
    path = str(tmp_path / "out")
    children.append(start(ctx, barrier_expect_broken, barrier, path))
    deadline = time.monotonic() + T
    while barrier.n_waiting != 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert barrier.n_waiting == 1
    barrier.abort()
    assert join_all(children) == [0]
    assert read_lines(path) == ["broken"]
    assert barrier.broken
    with pytest.raises(threading.BrokenBarrierError):
        barrier.wait()
    barrier.reset()
    assert not barrier.broken and barrier.n_waiting == 0


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_lock_passed_on_to_grandchild(tmp_path, method, children):
    ctx = polyproc.get_context(method)
    lock = ctx.Lock()
    path = tmp_path / "counter"
    path.write_text("0")
    children.append(start(ctx, pass_lock_on, lock, str(path), method))
    incr_counter(lock, str(path), 5)
    assert join_all(children) == [0]
    assert path.read_text() == "10"


def test_rlock_held_at_fork_is_not_owned_by_child(tmp_path, children):
    ctx = polyproc.get_context("fork")
    rlock = ctx.RLock()
    path = str(tmp_path / "out")
    with rlock:
        children.append(start(ctx, check_rlock_after_fork, rlock, path))
        assert join_all(children) == [0]
    assert read_lines(path) == ["<RLock(SomeOtherProcess,nonzero)>", "False"]


def test_spawn_context_lock_works_in_fork_child(tmp_path, children):
    lock = polyproc.get_context("spawn").Lock()
    path = tmp_path / "counter"
    path.write_text("0")
    children.append(start(polyproc.get_context("fork"), incr_counter, lock, str(path), 10))
    assert join_all(children) == [0]
    assert path.read_text() == "10"


# -- naming, unlinking and the fault case

def _sem_entries():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("sem.pp-")}
    except OSError:
        return set()


def _shm_names(*objs):
    """The /dev/shm entries of the named semaphores behind ``objs`` (none under fork)."""
    names = {o._semlock.name for o in objs}
    return {"sem." + n[1:] for n in names if n is not None}


# Other test sessions on the same machine may create (and their leak checks unlink) pp-
# entries at any time, so these tests look only at the names of their own objects.

@pytest.mark.parametrize("method", METHODS)
def test_semaphore_names_and_unlinking(method):
    lock = polyproc.get_context(method).Lock()
    name = lock._semlock.name
    if method == "fork":
        assert name is None  # unlinked at creation: children inherit the open semaphore
    else:
        assert name.startswith(synchronize.SEM_PREFIX)
        assert _shm_names(lock) <= _sem_entries()
    entries = _shm_names(lock)
    del lock
    gc.collect()
    assert not entries & _sem_entries()


@pytest.mark.parametrize("method", METHODS)
def test_sigkilled_lock_holder_does_not_hang_or_leak(method, no_leaks):
    ctx = polyproc.get_context(method)
    lock, held = ctx.Lock(), ctx.Semaphore(0)
    entries = _shm_names(lock, held)
    assert len(entries) == (0 if method == "fork" else 2)
    p = start(ctx, hold_lock_forever, lock, held)
    try:
        assert held.acquire(timeout=T)
        os.kill(p.pid, signal.SIGKILL)
        p.join(T)
        assert p.exitcode == -signal.SIGKILL
        t0 = time.monotonic()
        assert lock.acquire(timeout=0.2) is False
        assert time.monotonic() - t0 < 5
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    del lock, held, p
    gc.collect()
    assert not entries & _sem_entries()


TRACKER_SCRIPT = """
import os, signal
import polyproc
lock = polyproc.get_context('spawn').Lock()
lock.acquire()
print(lock._semlock.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_tracker_unlinks_semaphore_of_sigkilled_tree(tmp_path):
    # run_script returns once every process holding its output pipes is gone, the tracker
    # included: by then the tracker has unlinked the name.
    res = run_script(tmp_path, TRACKER_SCRIPT)
    assert res.returncode == -signal.SIGKILL
    name = res.stdout.strip()
    assert name.startswith("/pp-")
    assert "sem." + name[1:] not in _sem_entries()
    assert "leaked semaphore" in res.stderr and name in res.stderr


# -- misuse: the stdlib's errors

def _error(fn):
    try:
        fn()
    except Exception as e:
        return type(e), str(e)
    return None


MISUSE = {
    "release unlocked Lock": lambda m: m.Lock().release(),
    "release un-owned RLock": lambda m: m.RLock().release(),
    "over-release BoundedSemaphore": lambda m: (lambda s: (s.acquire(), s.release(),
                                                           s.release()))(m.BoundedSemaphore(1)),
    "negative Semaphore": lambda m: m.Semaphore(-1),
    "wait without lock": lambda m: m.Condition().wait(0),
    "notify without lock": lambda m: m.Condition().notify(),
    "notify_all without lock": lambda m: m.Condition().notify_all(),
    "pickle Lock": lambda m: pickle.dumps(m.Lock()),
    "pickle RLock": lambda m: pickle.dumps(m.RLock()),
    "pickle Semaphore": lambda m: pickle.dumps(m.Semaphore()),
    "pickle Condition": lambda m: pickle.dumps(m.Condition()),
    "pickle Event": lambda m: pickle.dumps(m.Event()),
    "fork-context Lock to spawn child": lambda m: m.get_context("spawn").Process(
        target=noop, args=(m.get_context("fork").Lock(),)).start(),
}


@pytest.mark.parametrize("case", list(MISUSE))
def test_misuse_raises_like_stdlib(case):
    expected = _error(lambda: MISUSE[case](multiprocessing))
    got = _error(lambda: MISUSE[case](polyproc))
    assert expected is not None
    assert got == expected


def test_acquire_nonblocking_and_timeout():
    lock = polyproc.Lock()
    assert lock.acquire(False) is True
    assert lock.acquire(False) is False
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.05) is False
    assert time.monotonic() - t0 >= 0.04
    lock.release()
    with lock:
        assert repr(lock) == "<Lock(owner=MainProcess)>"


def test_reprs_match_stdlib():
    def reprs(m):
        ctx = m.get_context("spawn")
        lock, rlock, sem, bsem = ctx.Lock(), ctx.RLock(), ctx.Semaphore(3), ctx.BoundedSemaphore(2)
        cond = ctx.Condition(ctx.Lock())
        out = [repr(lock), repr(rlock), repr(sem), repr(bsem), repr(cond)]
        with lock, rlock, rlock, cond:
            bsem.acquire()
            out += [repr(lock), repr(rlock), repr(bsem), repr(cond)]
        out.append(cond.wait_for(lambda: 7) if cond.acquire() else None)
        cond.release()
        box = {}
        t = threading.Thread(target=lambda: box.update(r=(lock.acquire(), repr(lock))),
                             name="T")
        t.start()
        t.join()
        out.append(box["r"])
        ev = ctx.Event()
        ev.set()
        out.append(repr(ev).split(" at ")[0] + repr(ev).split(">")[0][-4:])
        return out

    assert reprs(polyproc) == reprs(multiprocessing)


def test_condition_wait_timeouts_are_accounted():
    cond = polyproc.Condition()
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait(0.01) is False
        cond.notify()  # forgets the timed-out waiters; must not block
        t0 = time.monotonic()
        assert cond.wait_for(lambda: False, timeout=0.05) is False
        assert time.monotonic() - t0 >= 0.04
    assert repr(cond).endswith(", 0)>")


def test_condition_between_threads():
    cond = polyproc.Condition()
    state = []

    def waiter():
        with cond:
            state.append(cond.wait_for(lambda: "go" in state, T))

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    with cond:
        state.append("go")
        cond.notify_all()
    for t in threads:
        t.join(T)
    assert state.count(True) == 3


def test_barrier_timeout_breaks_it():
    barrier = polyproc.Barrier(2, timeout=0.02)
    with pytest.raises(polyproc.synchronize.BrokenBarrierError):
        barrier.wait()
    assert barrier.broken
    assert synchronize.BrokenBarrierError is threading.BrokenBarrierError


def test_pickling_while_spawning_round_trips():
    from polyproc.context import set_spawning_popen
    from polyproc.reduction import _InheritedFd

    class FakePopen:
        DupFd = _InheritedFd

        def duplicate_for_child(self, fd):
            return os.dup(fd)

    ctx = polyproc.get_context("spawn")
    lock, bsem, barrier = ctx.Lock(), ctx.BoundedSemaphore(3), ctx.Barrier(2)
    set_spawning_popen(FakePopen())
    try:
        data = pickle.dumps((lock, bsem, barrier))
    finally:
        set_spawning_popen(None)
    lock2, bsem2, barrier2 = pickle.loads(data)
    assert type(lock2) is synchronize.Lock and type(bsem2) is synchronize.BoundedSemaphore
    assert lock2._semlock.name == lock._semlock.name
    with lock2:
        assert not lock.acquire(False)
    assert bsem2.get_value() == 3 and bsem2._semlock.maxvalue == 3
    barrier2._count = 5
    assert barrier._count == 5  # same shared memory


def test_default_context_is_used_without_ctx():
    lock = synchronize.Lock()
    assert lock._is_fork_ctx == (polyproc.get_start_method() == "fork")
    assert synchronize.Condition().wait_for(lambda: 1) == 1


# -- differential: the same program under the stdlib and under polyproc

DIFF_PROGRAM = """
import functools, os, sys, threading, time
import {lib} as mp

T = 30

def append(path, text):
    with open(path, 'a') as f:
        f.write(str(text) + '\\n')

def lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []

def incr(lock, path, n):
    for _ in range(n):
        with lock:
            with open(path) as f:
                v = int(f.read())
            with open(path, 'w') as f:
                f.write(str(v + 1))

def party(b, path):
    append(path, b.wait(T))

def waiter(ev, ack):
    if ev.wait(T):
        ack.release()

def sem_worker(sem, entered, go):
    sem.acquire()
    entered.release()
    go.wait(T)
    sem.release()

def consumer(cond, path, n, out):
    got = []
    with cond:
        while len(got) < n:
            cond.wait_for(lambda: len(lines(path)) > len(got), T)
            got = lines(path)
    append(out, ','.join(got))

def run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p

def join(procs):
    for p in procs:
        p.join(T)
    return [p.exitcode for p in procs]

if __name__ == '__main__':
    ctx = mp.get_context({method!r})
    d = os.path.join(os.getcwd(), '{lib}_{method}')
    os.mkdir(d)
    f = lambda name: os.path.join(d, name)

    lock = ctx.Lock()
    with open(f('counter'), 'w') as fh:
        fh.write('0')
    print('lock', join([run(ctx, incr, lock, f('counter'), 100) for _ in range(3)]),
          open(f('counter')).read(), lock)

    b = ctx.Barrier(3, action=functools.partial(append, f('action'), 'tripped'))
    ps = [run(ctx, party, b, f('idx')) for _ in range(2)]
    mine = b.wait(T)
    print('barrier', join(ps), sorted(int(x) for x in lines(f('idx')) + [mine]),
          lines(f('action')), b.n_waiting, b.broken)
    b.abort()
    print('aborted', b.broken)

    ev, ack = ctx.Event(), ctx.Semaphore(0)
    print('event before', ev.is_set(), ev.wait(0.01))
    ps = [run(ctx, waiter, ev, ack) for _ in range(2)]
    ev.set()
    print('event', join(ps), ev.is_set(), ev.wait(), ack.get_value())

    sem, entered, go = ctx.Semaphore(2), ctx.Semaphore(0), ctx.Event()
    ps = [run(ctx, sem_worker, sem, entered, go) for _ in range(3)]
    got = [entered.acquire(timeout=T), entered.acquire(timeout=T), entered.acquire(timeout=0.2)]
    print('semaphore', got, sem.get_value(), sem)
    go.set()
    print('semaphore', join(ps), sem.get_value(), entered.get_value())

    cond = ctx.Condition()
    p = run(ctx, consumer, cond, f('items'), 4, f('out'))
    for i in range(4):
        with cond:
            append(f('items'), i)
            cond.notify()
    print('condition', join([p]), lines(f('out')), cond)
"""


@pytest.mark.parametrize("method", METHODS)
def test_programs_same_output_as_stdlib(tmp_path, method):
    outs = []
    for lib in ("multiprocessing", "polyproc"):
        res = run_script(tmp_path, DIFF_PROGRAM.format(lib=lib, method=method),
                         name=f"sync_{lib}_{method}.py")
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout)
    assert outs[1] == outs[0]
    assert "lock [0, 0, 0] 300 <Lock(owner=None)>" in outs[1]
