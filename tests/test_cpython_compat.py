"""Behaviours that CPython's own multiprocessing test suite checks (issue 11), each under the
start methods where it matters: signals ending blocking waits, what a child inherits (logger
level, socket default timeout, interpreter flags, file descriptors), atexit in children,
start-method mixing, and the stdlib's test hooks (``util.abstract_sockets_supported``,
``process._dangling``, ``util._cleanup_tests``).

Also the test session's own /dev/shm leak check: it must leave other programs' entries alone.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import polyproc
from conftest import Snapshot

METHODS = ["fork", "spawn", "forkserver"]
SRC = str(Path(polyproc.__file__).resolve().parents[1])
T = 30.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=METHODS)
def ctx(request):
    return polyproc.get_context(request.param)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [env.get("PYTHONPATH")])])
    return env


# ---------------------------------------------------------------- child targets


def _main_thread_sleeping(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "S"
    except OSError:
        return True  # no /proc: the parent is told at once


def _interrupt_when_blocked(pid: int, go) -> None:  # noqa: ANN001
    """SIGINT the parent once it went to sleep after setting ``go`` (in the wait under test)."""
    go.wait(T)
    deadline = time.monotonic() + T
    while not _main_thread_sleeping(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(pid, signal.SIGINT)


def _send_logger_level(conn) -> None:  # noqa: ANN001
    conn.send(polyproc.get_logger().getEffectiveLevel())
    conn.close()


def _register_atexit_writer(path: str) -> None:
    def write() -> None:
        with open(path, "w") as f:
            f.write(f"deadbeef {os.getpid()}")

    atexit.register(write)


def _report_fd_count(ready, go, q) -> None:  # noqa: ANN001
    q.put(len(os.listdir("/proc/self/fd")))
    ready.release()
    go.wait(T)


def _send_fd_count(conn) -> None:  # noqa: ANN001
    conn.send(len(os.listdir("/proc/self/fd")))
    conn.close()


def _noop(*args) -> None:  # noqa: ANN002
    pass


# ---------------------------------------------------------------- SIGINT ends a blocking wait


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler, as in a terminal (a backgrounded run inherits SIG_IGN)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


WAITS = {
    "Condition.wait(60)": lambda ctx: _cond_wait(ctx.Condition()),
    "Lock.acquire()": lambda ctx: _twice(ctx.Lock(), None),
    "Lock.acquire(timeout=60)": lambda ctx: _twice(ctx.Lock(), 60),
    "Semaphore(0).acquire()": lambda ctx: ctx.Semaphore(0).acquire(),
    "Event.wait(60)": lambda ctx: ctx.Event().wait(60),
    "Event.wait()": lambda ctx: ctx.Event().wait(),
    "Condition.wait()": lambda ctx: _cond_wait(ctx.Condition(), None),
    "Condition.wait_for(60)": lambda ctx: _cond_wait_for(ctx.Condition(ctx.Lock())),
    "RLock.acquire(timeout=60)": lambda ctx: _rlock_of_another_thread(ctx.RLock()),
    "BoundedSemaphore.acquire(timeout=60)": lambda ctx: _twice(ctx.BoundedSemaphore(1), 60),
    "Barrier(2).wait(60)": lambda ctx: ctx.Barrier(2).wait(60),
}


def _cond_wait(cond, timeout: float | None = 60) -> None:  # noqa: ANN001
    with cond:
        cond.wait(timeout)


def _cond_wait_for(cond) -> None:  # noqa: ANN001
    with cond:
        cond.wait_for(lambda: False, 60)


def _rlock_of_another_thread(rlock) -> None:  # noqa: ANN001
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with rlock:
            held.set()
            done.wait(T)

    t = threading.Thread(target=hold)
    t.start()
    try:
        held.wait(T)
        rlock.acquire(True, 60)
    finally:
        done.set()
        t.join(T)


def _twice(lock, timeout) -> None:  # noqa: ANN001
    lock.acquire()
    lock.acquire(True, timeout)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("what", list(WAITS))
def test_sigint_interrupts_a_blocking_wait(ctx, what, default_sigint) -> None:  # noqa: ANN001
    # KeyboardInterrupt in the waiting main thread at once, not when the wait times out
    # (CPython's WithProcessesTestCondition.test_wait_result).
    go = ctx.Event()
    p = ctx.Process(target=_interrupt_when_blocked, args=(os.getpid(), go))
    p.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            go.set()
            WAITS[what](ctx)
        assert time.monotonic() - t0 < 30
    finally:
        p.join(T)
    assert p.exitcode == 0


TIMED_WAITS = {
    "Condition.wait": lambda ctx, t: _timed_cond_wait(ctx.Condition(), t),
    "Lock.acquire": lambda ctx, t: _timed_twice(ctx.Lock(), t),
    "Semaphore(0).acquire": lambda ctx, t: ctx.Semaphore(0).acquire(True, t),
    "Event.wait": lambda ctx, t: ctx.Event().wait(t),
    "Barrier(2).wait": lambda ctx, t: _timed_barrier(ctx.Barrier(2), t),
}


def _timed_cond_wait(cond, t: float) -> bool:  # noqa: ANN001
    with cond:
        return cond.wait(t)


def _timed_twice(lock, t: float) -> bool:  # noqa: ANN001
    lock.acquire()
    return lock.acquire(True, t)


def _timed_barrier(barrier, t: float) -> bool:  # noqa: ANN001
    try:
        barrier.wait(t)
    except threading.BrokenBarrierError:
        return False
    return True


def _signal_when_blocked(pid: int, go) -> None:  # noqa: ANN001
    go.wait(T)
    deadline = time.monotonic() + T
    while not _main_thread_sleeping(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(pid, signal.SIGUSR1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", list(TIMED_WAITS))
def test_a_signal_whose_handler_returns_does_not_end_a_wait(what) -> None:  # noqa: ANN001
    # The handler runs during the wait (as in the stdlib), then the wait goes on to its own
    # deadline: neither an early False nor a longer wait.
    ctx = polyproc.get_context("fork")
    seen = []
    old = signal.signal(signal.SIGUSR1, lambda *a: seen.append(time.monotonic()))
    go = ctx.Event()
    p = ctx.Process(target=_signal_when_blocked, args=(os.getpid(), go))
    p.start()
    try:
        go.set()
        t0 = time.monotonic()
        assert TIMED_WAITS[what](ctx, 2.0) is False
        took = time.monotonic() - t0
    finally:
        p.join(T)
        signal.signal(signal.SIGUSR1, old)
    assert len(seen) == 1 and seen[0] - t0 < 2.0, "the handler did not run during the wait"
    assert 1.9 <= took < 10, took


def _main_thread_switches() -> int:
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("what", list(TIMED_WAITS))
def test_idle_waits_use_no_cpu(what) -> None:  # noqa: ANN001
    # One blocking system call, no polling: a 1.5 s wait costs (almost) no CPU time and
    # wakes the thread a handful of times at most (polling every 10 ms would be 150).
    ctx = polyproc.get_context("fork")
    TIMED_WAITS[what](ctx, 0.01)  # warm up (first calls, lazy imports)
    cpu0, sw0, t0 = time.process_time(), _main_thread_switches(), time.monotonic()
    assert TIMED_WAITS[what](ctx, 1.5) is False
    cpu, switches = time.process_time() - cpu0, _main_thread_switches() - sw0
    assert time.monotonic() - t0 >= 1.45
    assert cpu < 0.05, f"{what} used {cpu:.3f} s of CPU while idle"
    assert switches < 15, f"{what} woke up {switches} times while idle"


@pytest.mark.timeout(90)
def test_parent_still_gets_sigint_after_shared_memory_manager_start(default_sigint) -> None:
    # The manager's server ignores SIGINT; the parent that started it must not.
    from polyproc.managers import SharedMemoryManager

    with SharedMemoryManager() as smm:
        lists = [smm.ShareableList(range(3))]
        os.kill(smm._process.pid, signal.SIGINT)
        try:
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(T)  # interrupted at once
            lists.append(smm.ShareableList(range(2)))  # the server survived its SIGINT
            assert list(lists[1]) == [0, 1]
        finally:
            for sl in lists:
                sl.shm.close()


# ---------------------------------------------------------------- what a child inherits


@pytest.fixture
def logger_levels():
    logger, root = polyproc.get_logger(), logging.getLogger()
    old = logger.level, root.level
    yield logger, root
    logger.setLevel(old[0])
    root.setLevel(old[1])


def test_child_gets_the_effective_logger_level(ctx, logger_levels) -> None:  # noqa: ANN001
    # CPython's WithProcessesTestLogging.test_level: a polyproc logger left at NOTSET follows
    # the root logger's level in the parent, and so in the child.
    logger, root = logger_levels
    for own, root_level, expected in [(32, logging.WARNING, 32), (logging.NOTSET, 37, 37)]:
        logger.setLevel(own)
        root.setLevel(root_level)
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_send_logger_level, args=(w,))
        p.start()
        w.close()
        assert r.poll(T)
        assert r.recv() == expected
        p.join(T)
        assert p.exitcode == 0


SOCKET_TIMEOUT_SCRIPT = """
import os, socket, sys, time
import polyproc
from polyproc._resources import fd_sharer
from polyproc._spawn import forkserver

def child(conn):
    for _ in range(2):
        c = conn.recv()
        c.send("through a passed connection")
        c.close()

if __name__ == "__main__":
    socket.setdefaulttimeout(0.001)
    ctx = polyproc.get_context("forkserver")
    ps = [ctx.Process(target=os.getpid) for _ in range(3)]  # the first one starts the server
    for p in ps:
        p.start()
    for p in ps:
        p.join(30)
    assert [p.exitcode for p in ps] == [0, 0, 0], [p.exitcode for p in ps]
    assert forkserver._forkserver._sock.gettimeout() is None
    # A Connection sent to a running child goes through the fd sharer: its listener must not
    # time out between two sends.
    spawn = polyproc.get_context("spawn")
    a, b = spawn.Pipe()
    p = spawn.Process(target=child, args=(b,))
    p.start()
    for i in range(2):
        mine, theirs = spawn.Pipe()
        a.send(theirs)
        theirs.close()
        assert mine.poll(30) and mine.recv() == "through a passed connection"
        if i == 0:
            time.sleep(0.05)  # longer than the default timeout: the listener must live on
            assert fd_sharer._get_sharer().listener.gettimeout() is None
    p.join(30)
    assert p.exitcode == 0, p.exitcode
    print("ok")
"""


@pytest.mark.timeout(120)
def test_polyproc_sockets_ignore_socket_default_timeout(tmp_path: Path) -> None:
    # CPython's TestTimeouts.test_timeout under forkserver: with socket.setdefaulttimeout(0.1)
    # the fork server's client socket timed out waiting for the server ("the fork server
    # died").
    script = tmp_path / "prog.py"
    script.write_text(SOCKET_TIMEOUT_SCRIPT)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=100, env=_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == "ok"


FLAGS_SCRIPT = """
import sys
sys.path.insert(0, {src!r})
sys.path.append({deps!r})  # cloudpickle: this -c program's functions travel by value
import polyproc

def report(conn):
    conn.send(tuple(sys.flags))

for method in ("spawn", "forkserver"):
    ctx = polyproc.get_context(method)
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=report, args=(w,))
    p.start()
    assert r.poll(30), method
    child = r.recv()
    p.join(30)
    assert child == tuple(sys.flags), (method, child, tuple(sys.flags))
    assert p.exitcode == 0, (method, p.exitcode)
    print(method, "ok")
"""


@pytest.mark.timeout(120)
def test_children_of_an_e_s_o_interpreter(tmp_path: Path) -> None:
    # CPython's TestFlags.test_flags: a `python -E -S -O` parent's spawn and forkserver
    # children run with the same flags and find polyproc (on no default path here).
    import cloudpickle

    deps = str(Path(cloudpickle.__file__).resolve().parents[1])
    code = FLAGS_SCRIPT.format(src=SRC, deps=deps)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-E", "-S", "-O", "-c", code], capture_output=True,
                         text=True, timeout=100, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split() == ["spawn", "ok", "forkserver", "ok"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_concurrent_children_hold_the_same_number_of_fds(method: str) -> None:
    # CPython's test_child_fd_inflation: a forkserver child must not inherit its running
    # siblings' fds from the server.
    ctx = polyproc.get_context(method)
    n = 5
    ready, go, q = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_report_fd_count, args=(ready, go, q)) for _ in range(n)]
    for p in ps:
        p.start()
    try:
        for _ in range(n):  # every child is running (and counted) before any exits
            assert ready.acquire(timeout=T)
        counts = [q.get(timeout=T) for _ in range(n)]
    finally:
        go.set()
        for p in ps:
            p.join(T)
    assert len(set(counts)) == 1, counts
    assert [p.exitcode for p in ps] == [0] * n


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fds_of(pid: int, but: int) -> list[str]:
    """What ``pid``'s fds refer to, leaving out the pipe of inode ``but``."""
    d = f"/proc/{pid}/fd"
    links = []
    for fd in os.listdir(d):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            links.append(os.readlink(f"{d}/{fd}"))
    return sorted(link for link in links if link != f"pipe:[{but}]")


@pytest.mark.timeout(120)
def test_forkserver_children_in_a_row_hold_the_same_number_of_fds() -> None:
    # One child after another: neither the children nor the fork server itself (nor the
    # parent) gain an fd per child.
    from polyproc._spawn import forkserver

    ctx = polyproc.get_context("forkserver")

    def run_one() -> tuple[int, int]:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_send_fd_count, args=(w,))
        p.start()
        w.close()
        try:
            assert r.poll(T)
            return r.recv(), os.fstat(p.sentinel).st_ino
        finally:
            r.close()
            p.join(T)
            assert p.exitcode == 0
            p.close()

    # The server closes a child's status pipe just after writing the status that ends our
    # join(): the last child's may still be open, so it is left out of the comparison.
    _, last = run_one()  # the server is up
    server = forkserver._forkserver._proc.pid
    parent_fds, server_fds = _fd_count(), _fds_of(server, last)
    counts = []
    for _ in range(20):
        count, last = run_one()
        counts.append(count)
    assert len(set(counts)) == 1, counts
    assert _fds_of(server, last) == server_fds
    assert _fd_count() == parent_fds


# ---------------------------------------------------------------- exit


def test_atexit_handlers_of_a_child_run_at_its_exit(ctx, tmp_path: Path) -> None:  # noqa: ANN001
    # CPython 3.13's WithProcessesTestAtExit (gh-83856): under fork and forkserver too; the
    # parent's own handlers do not run in a forked child.
    parent_pid = os.getpid()
    ran_in_child = tmp_path / "parent-handler-ran-in-a-child"

    def parent_handler() -> None:
        if os.getpid() != parent_pid:
            ran_in_child.write_text(str(os.getpid()))

    atexit.register(parent_handler)
    try:
        out = tmp_path / "output.txt"
        p = ctx.Process(target=_register_atexit_writer, args=(str(out),))
        p.start()
        p.join(T)
        assert p.exitcode == 0
        assert out.read_text() == f"deadbeef {p.pid}"
        assert not ran_in_child.exists()
    finally:
        atexit.unregister(parent_handler)


# ---------------------------------------------------------------- start methods


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "Condition", "Event"])
def test_fork_context_locks_refused_by_other_start_methods(method: str, kind: str) -> None:
    # The stdlib's error (CPython's TestStartMethod.test_mixed_startmethod): a fork-context
    # semaphore has no name, so a spawn or forkserver child cannot open it.
    obj = getattr(polyproc.get_context("fork"), kind)()
    p = polyproc.get_context(method).Process(target=_noop, args=(obj,))
    with pytest.raises(RuntimeError, match="A SemLock created in a fork context is being "
                                           "shared with a process in a spawn context"):
        p.start()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("kind", ["Queue", "JoinableQueue", "SimpleQueue"])
def test_fork_context_queues_refused_by_other_start_methods(method: str, kind: str) -> None:
    # As the stdlib's (CPython's TestStartMethod.test_mixed_startmethod), although polyproc's
    # ring could travel: code must fail the same way on either library.
    q = getattr(polyproc.get_context("fork"), kind)()
    p = polyproc.get_context(method).Process(target=_noop, args=(q,))
    with pytest.raises(RuntimeError, match="^A SemLock created in a fork context is being "
                                           "shared with a process in a spawn context. This is "
                                           "not supported. Please use the same context"):
        p.start()
    assert p.pid is None  # nothing was started
    q.put("still usable")
    assert q.get() == "still usable"


def _pass_on(q, method: str) -> None:  # noqa: ANN001
    p = polyproc.get_context(method).Process(target=q.put, args=(f"from a {method} grandchild",))
    p.start()
    p.join(T)
    if p.exitcode != 0:
        raise SystemExit(f"grandchild exit code {p.exitcode}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("queue_method", ["spawn", "forkserver"])
def test_non_fork_queues_go_to_every_start_method(queue_method: str) -> None:
    # The second half of test_mixed_startmethod, and gh-108520: a queue received by a child
    # may be passed on to that child's own children, whatever their start method.
    for method in METHODS:
        q = polyproc.get_context(queue_method).Queue()
        p = polyproc.get_context(method).Process(target=_pass_on, args=(q, "spawn"))
        p.start()
        assert q.get(timeout=T) == "from a spawn grandchild"
        p.join(T)
        assert p.exitcode == 0, (method, p.exitcode)


# ---------------------------------------------------------------- the stdlib's test hooks


def test_util_abstract_sockets_supported() -> None:
    assert polyproc.util.abstract_sockets_supported is (sys.platform == "linux")
    if polyproc.util.abstract_sockets_supported:
        from polyproc.connection import Client, Listener

        with Listener("\0polyproc-abstract-" + os.urandom(4).hex()) as listener:
            with Client(listener.address) as c, listener.accept() as s:
                c.send(1)
                assert s.recv() == 1


def test_process_dangling_and_cleanup_tests() -> None:
    from polyproc import process, util
    from polyproc._spawn import forkserver

    ctx = polyproc.get_context("forkserver")
    # Workers of pools kept by earlier tests (e.g. joblib's reused executor) may be alive.
    before = set(process.active_children())
    p = ctx.Process(target=_noop)
    p.start()
    assert p in process._dangling
    p.join(T)
    assert forkserver._forkserver._proc is not None
    util._cleanup_tests()
    assert forkserver._forkserver._proc is None  # the fork server stopped
    assert set(process.active_children()) <= before
    p = ctx.Process(target=_noop)  # and a new one starts when needed
    p.start()
    p.join(T)
    assert p.exitcode == 0


# ---------------------------------------------------------------- the session's leak check


HOLDER = """
import os, sys, time
sys.path.insert(0, {src!r})
import polyproc
lock = polyproc.get_context("spawn").Lock()
with open({name_file!r} + ".tmp", "w") as f:
    f.write(f"{{os.getpid()}} {{lock.name}}")
os.rename({name_file!r} + ".tmp", {name_file!r})
deadline = time.monotonic() + 60
while not os.path.exists({stop_file!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def _wait_for(predicate, what: str, timeout: float = T) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.timeout(90)
def test_leak_check_leaves_other_programs_entries_alone(tmp_path: Path) -> None:
    # /dev/shm is machine-wide: a semaphore made meanwhile by a program outside this session
    # (another test session) is not a leak of ours, and unlinking it broke that program.
    before = Snapshot.take()
    name_file, stop_file = tmp_path / "name", tmp_path / "stop"
    code = HOLDER.format(src=SRC, name_file=str(name_file), stop_file=str(stop_file))
    # Started through a shell that exits at once: the holder is reparented, outside our tree.
    subprocess.run(["/bin/sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 &', code],
                   check=True, timeout=30)
    _wait_for(name_file.exists, "the holder's semaphore")
    pid_text, sem_name = name_file.read_text().split()
    pid, entry = int(pid_text), "/dev/shm/sem." + sem_name.lstrip("/")
    try:
        assert pid not in {p.pid for p in psutil.Process().children(recursive=True)}
        assert os.path.exists(entry)
        assert before.leaks(0.5) == []
        assert os.path.exists(entry), "the leak check unlinked another program's semaphore"
    finally:
        stop_file.write_text("")
        _wait_for(lambda: not psutil.pid_exists(pid) or
                  psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "the holder's exit")
    with contextlib.suppress(FileNotFoundError):
        _wait_for(lambda: not os.path.exists(entry), "the holder's unlink", 10)
