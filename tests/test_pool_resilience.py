"""Transient failures around a pool: out of fds while replacing a worker, a fork server that
dies under running tasks, a resource tracker that dies, a pool that cannot be built (issue 16).

Each test bounds every wait with a deadline, checks that every task gets its outcome, and that
nothing leaks (fds, processes, threads, /dev/shm entries). What needs a process of its own
(running out of fds, killing the tracker, exiting without cleanup) runs as a script.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import _pool_targets as t
import _resilience_targets as rt
import polyproc
import polyproc.futures as pf
from _scripts import SRC
from conftest import held_elsewhere, shm_entries

METHODS = ["fork", "spawn", "forkserver"]
T = 30.0
TESTS = str(Path(__file__).resolve().parent)


def run(tmp_path: Path, code: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``code`` as a script (polyproc and the test helpers importable); it must succeed."""
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                         timeout=timeout, cwd=str(tmp_path), env=env)
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


def wait_until(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Shared by the scripts: fill the fd table, wait with a deadline, count fds.
PRELUDE = """
import json, os, resource, signal, sys, threading, time
import polyproc, polyproc.futures
import _pool_targets as t

def fill(keep):
    '''Open fds until none is left, then close ``keep`` of them again.'''
    held = []
    while True:
        try:
            held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            break
    for _ in range(keep):
        os.close(held.pop())
    return held

def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            sys.exit(f'timed out after {timeout} s waiting for {what}')
        time.sleep(0.01)

def nfds():
    return len(os.listdir('/proc/self/fd'))

def make(api, method, n=2):
    ctx = polyproc.get_context(method)
    if api == 'pool':
        pool = ctx.Pool(n)
        return pool, lambda f, xs: pool.map(f, xs), pool.terminate
    ex = polyproc.futures.ProcessPoolExecutor(n, mp_context=ctx)
    return ex, lambda f, xs: list(ex.map(f, xs)), ex.shutdown
"""


# ---------------------------------------------------------------- out of fds while replacing


EMFILE_REPLACE = PRELUDE + """
if __name__ == '__main__':
    api, method, keep = sys.argv[1], sys.argv[2], int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
    pool, run, stop = make(api, method)
    assert run(t.sq, range(10)) == [x * x for x in range(10)]
    backend = pool._backend
    before = nfds()
    held = fill(keep)  # ``keep`` fds left: too few to start a worker (it needs 6 at once)
    victim = backend.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    # The dispatcher fails to start a replacement, and tries again (back-off from 10 ms).
    wait_until(lambda: backend.starts.failures >= 3, 15, 'failed attempts to start a worker')
    assert backend.thread.is_alive(), 'the dispatcher died'
    assert victim not in backend.worker_pids() and len(backend.worker_pids()) == 1
    # Meanwhile the pool runs on its other worker.
    assert run(t.sq, range(20)) == [x * x for x in range(20)]
    for fd in held:
        os.close(fd)
    t0 = time.monotonic()
    assert run(t.sq, range(100)) == [x * x for x in range(100)]
    wait_until(lambda: len(backend.worker_pids()) == 2, 10, 'the replacement worker')
    recovered = time.monotonic() - t0
    assert run(t.sq, range(100)) == [x * x for x in range(100)]
    after = nfds()
    print(json.dumps(dict(failures=backend.starts.failures, error=repr(backend.starts.error),
                          recovered=recovered, before=before, after=after,
                          alive=backend.thread.is_alive())))
    stop()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("api,keep", [("pool", 1), ("pool", 2), ("executor", 2)])
def test_emfile_while_replacing_a_dead_worker(tmp_path, method, api, keep) -> None:  # noqa: ANN001
    res = run(tmp_path, EMFILE_REPLACE, api, method, str(keep))
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["alive"] and out["failures"] >= 3
    assert "Too many open files" in out["error"] or "EMFILE" in out["error"], out
    assert out["recovered"] < 5, out  # the back-off is at most 1 s
    assert out["after"] == out["before"], f"fds leaked by the failed starts: {out}"
    # One warning for the whole run of failures, naming what ran out and what to do.
    assert res.stderr.count("could not start a pool worker") == 1, res.stderr
    assert "EMFILE" in res.stderr and "ulimit -n" in res.stderr, res.stderr


EMFILE_STALL = PRELUDE + """
from polyproc._backends import starts
starts.STALL_LIMIT = 0.5

if __name__ == '__main__':
    method = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for api in ('pool', 'executor'):
        pool, run, stop = make(api, method)
        assert run(t.sq, range(10)) == [x * x for x in range(10)]
        backend = pool._backend
        pids = backend.worker_pids()
        # Below every fd in use: no new fd at all, whatever the dead workers free.
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not backend.worker_pids(), 10, 'the workers to be gone')
        t0 = time.monotonic()
        if api == 'pool':
            r = pool.map_async(t.sq, range(10))
            r.wait(30)
            assert r.ready(), 'the map still waits'
            try:
                r.get(0)
            except Exception as e:
                err = e
        else:
            f = pool.submit(t.sq, 3)
            err = f.exception(30)
        waited = time.monotonic() - t0
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert backend.thread.is_alive(), 'the dispatcher died'
        t1 = time.monotonic()
        assert run(t.sq, range(50)) == [x * x for x in range(50)]  # usable again
        print(json.dumps(dict(api=api, type=type(err).__name__, msg=str(err),
                              cause=repr(err.__cause__), waited=waited,
                              broken=isinstance(err, polyproc.BrokenProcessPool),
                              recovered=time.monotonic() - t1)), flush=True)
        stop()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_no_worker_can_start_fails_waiting_tasks_then_recovers(tmp_path, method) -> None:  # noqa: ANN001
    res = run(tmp_path, EMFILE_STALL, method)
    outs = [json.loads(line) for line in res.stdout.strip().splitlines()]
    assert [o["api"] for o in outs] == ["pool", "executor"], res.stdout
    for o in outs:
        assert o["broken"], o
        assert "no pool worker could be started" in o["msg"] and "EMFILE" in o["msg"], o
        assert "ulimit -n" in o["msg"] and "keeps trying" in o["msg"], o
        assert "Too many open files" in o["cause"], o
        assert 0.4 < o["waited"] < 10, o  # failed after the stall limit (0.5 s), not before
        assert o["recovered"] < 5, o


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", ["EAGAIN", "ENOMEM"])
def test_fork_refused_while_replacing(monkeypatch, code, no_leaks) -> None:  # noqa: ANN001
    """``os.fork`` refused (a process limit, memory): as for fds, the dispatcher retries."""
    import errno
    import threading

    real_fork = os.fork
    refusals = [5]

    def fork() -> int:
        if threading.current_thread().name == "polyproc-dispatcher" and refusals[0] > 0:
            refusals[0] -= 1
            raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
        return real_fork()

    with polyproc.get_context("fork").Pool(2) as pool:
        assert pool.map(t.sq, range(4)) == [0, 1, 4, 9]
        backend = pool._backend
        before = len(os.listdir("/proc/self/fd"))
        monkeypatch.setattr(os, "fork", fork)
        victim = backend.worker_pids()[0]
        with pytest.warns(RuntimeWarning, match=f"could not start a pool worker: .*{code}"):
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: backend.starts.failures >= 5, T, "the refused starts")
            wait_until(lambda: len(backend.worker_pids()) == 2, T, "the replacement worker")
        assert getattr(errno, code) == backend.starts.error.errno
        assert pool.map(t.sq, range(50)) == [x * x for x in range(50)]
        assert len(os.listdir("/proc/self/fd")) == before  # nothing of the failed starts left


@pytest.mark.timeout(60)
def test_start_failing_for_another_reason_fails_waiting_tasks_at_once(monkeypatch,
                                                                      no_leaks) -> None:  # noqa: ANN001
    """An error that need not go away by itself: with no worker left, the waiting tasks
    fail at once (naming it) rather than after the stall limit; the pool retries still."""
    import threading

    from polyproc._backends.local import LocalBackend

    real_start = LocalBackend._start_worker
    allow = threading.Event()

    def start(self, slot):  # noqa: ANN001, ANN202
        if threading.current_thread().name == "polyproc-dispatcher" and not allow.is_set():
            raise RuntimeError("no workers today")
        return real_start(self, slot)

    with polyproc.get_context("fork").Pool(1) as pool:
        assert pool.map(t.sq, range(4)) == [0, 1, 4, 9]
        backend = pool._backend
        monkeypatch.setattr(LocalBackend, "_start_worker", start)
        with pytest.warns(RuntimeWarning, match="no workers today"):
            os.kill(backend.worker_pids()[0], signal.SIGKILL)
            wait_until(lambda: backend.starts.failures >= 1, T, "a failed start")
            t0 = time.monotonic()
            with pytest.raises(polyproc.BrokenProcessPool,
                               match="no pool worker could be started .*RuntimeError: no "
                                     "workers today"):
                pool.apply_async(t.sq, (3,)).get(T)
            assert time.monotonic() - t0 < 5  # at the next attempt, not after the stall limit
            allow.set()
            wait_until(lambda: len(backend.worker_pids()) == 1, T, "the replacement worker")
        assert pool.map(t.sq, range(20)) == [x * x for x in range(20)]


# ---------------------------------------------------------------- the fork server dies


def _fork_server():  # noqa: ANN202
    from polyproc._spawn import forkserver

    proc = forkserver._forkserver._proc
    assert proc is not None and proc.poll() is None
    return proc


def _kill_fork_server() -> int:
    proc = _fork_server()
    proc.kill()
    proc.wait(T)
    return proc.pid


@pytest.mark.timeout(120)
@pytest.mark.parametrize("api", ["pool", "executor"])
def test_fork_server_killed_under_running_tasks(tmp_path, api, no_leaks) -> None:  # noqa: ANN001
    ctx = polyproc.get_context("forkserver")
    started, gate = tmp_path / "started", tmp_path / "gate"
    started.mkdir()
    n = 2
    if api == "pool":
        pool = ctx.Pool(n)
        submit = lambda f, *a: pool.apply_async(f, a)  # noqa: E731
        outcome = lambda r: r.get(T)  # noqa: E731
        run = lambda f, xs: pool.map(f, xs)  # noqa: E731
    else:
        pool = pf.ProcessPoolExecutor(n, mp_context=ctx)
        submit = pool.submit
        outcome = lambda f: f.result(T)  # noqa: E731
        run = lambda f, xs: list(pool.map(f, xs))  # noqa: E731
    orphans: list[int] = []
    try:
        assert run(t.sq, range(8)) == [x * x for x in range(8)]
        backend = pool._backend
        pids = sorted(backend.worker_pids())
        server = _fork_server().pid
        assert all(psutil.Process(p).ppid() == server for p in pids)
        tasks = [submit(rt.gated, str(started), str(gate), i) for i in range(n)]
        queued = [submit(rt.gated, str(started), str(gate), i) for i in range(n, 2 * n)]
        wait_until(lambda: len(rt.started(str(started))) == n, T, "the tasks to run")
        _kill_fork_server()
        orphans = pids
        # The dispatcher learns that the server died; the workers live on, orphaned.
        wait_until(lambda: all(w.proc._popen.orphaned for w in backend.workers.values()),
                   T, "the dispatcher to adopt the orphaned workers")
        assert sorted(backend.worker_pids()) == pids
        assert all(alive(p) for p in pids)
        gate.touch()
        results = [outcome(x) for x in tasks + queued]
        assert [v for v, _pid in results] == [i * 10 for i in range(2 * n)]
        assert {pid for _v, pid in results} <= set(pids)  # ran by the orphaned workers
        assert run(t.sq, range(50)) == [x * x for x in range(50)]
        # A worker that dies now is replaced from a new fork server; its exit code is
        # unknowable (its parent, the server, is gone): said so.
        gate.unlink()
        doomed = submit(rt.gated, str(started), str(gate), 99)
        wait_until(lambda: any(v == 99 for v, _ in rt.started(str(started))), T,
                   "the doomed task to run")
        runner = next(p for v, p in rt.started(str(started)) if v == 99)
        os.kill(runner, signal.SIGKILL)
        with pytest.raises(polyproc.WorkerLostError,
                           match=r"ended \(exit status unknown: its fork server had died\) "
                                 r"while running task 0 of (apply|submit)\(\)"):
            outcome(doomed)
        gate.touch()
        wait_until(lambda: len(backend.worker_pids()) == n, T, "the replacement worker")
        new = [p for p in backend.worker_pids() if p not in pids]
        assert len(new) == 1 and psutil.Process(new[0]).ppid() == _fork_server().pid != server
        assert run(t.sq, range(50)) == [x * x for x in range(50)]
        assert backend.thread.is_alive()
    finally:
        if api == "pool":
            pool.terminate()
            pool.join()
        else:
            pool.shutdown()
    # Orphans are no descendants of ours any more (the leak check can't see them): check here.
    wait_until(lambda: not any(alive(p) for p in orphans), T, "the orphaned workers to exit")


@pytest.mark.timeout(120)
def test_fork_server_killed_while_workers_start(no_leaks) -> None:
    """Kill fork servers again and again while a pool replaces workers after each task: no
    task is lost, the dispatcher survives, and starts that hit a dying server are retried."""
    ctx = polyproc.get_context("forkserver")
    seen: set[int] = set()
    with ctx.Pool(2, maxtasksperchild=1) as pool:
        backend = pool._backend
        r = pool.map_async(t.sleep_sq, range(40), chunksize=1)
        kills = 0
        deadline = time.monotonic() + 60
        while not r.ready() and time.monotonic() < deadline:
            seen.update(backend.worker_pids())
            if kills < 8:
                try:
                    _kill_fork_server()
                    kills += 1
                except AssertionError:  # between two servers
                    pass
            r.wait(0.3)
        assert r.get(T) == [x * x for x in range(40)]
        assert kills >= 3 and backend.thread.is_alive()
        assert pool.map(t.sq, range(10)) == [x * x for x in range(10)]
    wait_until(lambda: not any(alive(p) for p in seen), T, "every worker to exit")


@pytest.mark.timeout(60)
def test_process_outlives_its_fork_server(no_leaks) -> None:
    ctx = polyproc.get_context("forkserver")
    p = ctx.Process(target=time.sleep, args=(60,))
    p.start()
    try:
        _kill_fork_server()
        assert p.is_alive() and p.exitcode is None  # the stdlib says: exit code 255
        p.join(0.2)
        assert p.is_alive()
        t0 = time.monotonic()
        p.terminate()  # by pidfd where there is one: its pid may be anybody's once it ends
        p.join(T)
        assert time.monotonic() - t0 < 10
        assert p.exitcode == 255 and p._popen.exit_unknown  # nobody can know it
        wait_until(lambda: not alive(p.pid), T, "the process to be gone")
        q = ctx.Process(target=time.sleep, args=(0,))  # from a new server
        q.start()
        q.join(T)
        assert q.exitcode == 0
    finally:
        if p.exitcode is None:
            p.kill()
            p.join(T)


# ---------------------------------------------------------------- the tracker dies


TRACKER_KILLED = """
import os, sys, time, psutil
import polyproc
from polyproc import shared_memory

def tracker():
    # A tracker just started may not have exec'd yet (its command line is still ours).
    deadline = time.monotonic() + 30
    while True:
        found = []
        for p in psutil.Process().children():
            try:
                if 'polyproc._resources.tracker' in ' '.join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                pass
        if len(found) == 1 or time.monotonic() > deadline:
            (p,) = found
            return p
        time.sleep(0.01)

if __name__ == '__main__':
    trigger = sys.argv[1]
    kept = shared_memory.SharedMemory(create=True, size=64)
    lock = polyproc.get_context('spawn').Lock()  # a named semaphore
    gone = shared_memory.SharedMemory(create=True, size=64)
    gone.close()
    gone.unlink()  # released: not to be registered again
    old = tracker()
    old.kill()
    old.wait(30)
    if trigger == 'shm':
        later = shared_memory.SharedMemory(create=True, size=64)
        names = [kept._name, later._name]
    else:  # starting a process makes sure the tree has a tracker
        p = polyproc.get_context('fork').Process(target=os.getpid)
        p.start()
        p.join(30)
        names = [kept._name]
    new = tracker()
    assert new.pid != old.pid
    print('shm', *(n.lstrip('/') for n in names))
    print('sem', lock.name)
    sys.stdout.flush()
    os._exit(0)  # no cleanup: the new tracker must unlink what this process held
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("trigger", ["shm", "process"])
def test_tracker_killed_and_restarted_registers_held_names_again(tmp_path, trigger) -> None:  # noqa: ANN001
    before = shm_entries()
    # Returns once every holder of the output pipes exited, the new tracker included: by
    # then it has cleaned up.
    res = run(tmp_path, TRACKER_KILLED, trigger)
    lines = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
    shm_names = lines["shm"].split()
    sem_name = lines["sem"].strip().lstrip("/")
    # Warned (like the stdlib), and told the new tracker the two names held then (not the
    # one unlinked before).
    assert "the tracker process died unexpectedly; a new one was started, and the 2 named " \
        "resource(s) this process holds were registered with it" in res.stderr, res.stderr
    for name in shm_names:
        assert not os.path.exists(f"/dev/shm/{name}"), f"{name} leaked"
        assert name in res.stderr  # the new tracker's warning names what it cleaned up
    assert not os.path.exists(f"/dev/shm/sem.{sem_name}"), "the semaphore leaked"
    assert sem_name in res.stderr
    new = shm_entries() - before
    assert not new - held_elsewhere(new)  # what other programs hold meanwhile is theirs


# ---------------------------------------------------------------- construction fails


CONSTRUCT = PRELUDE + """
import gc, psutil

def children():
    out = []
    for c in psutil.Process().children(recursive=True):
        try:
            if c.status() != psutil.STATUS_ZOMBIE and not any(
                    m in ' '.join(c.cmdline()) for m in ('forkserver', 'tracker')):
                out.append(c.pid)
        except psutil.Error:
            pass
    return out

if __name__ == '__main__':
    api, method = sys.argv[1], sys.argv[2]
    pool, run, stop = make(api, method)  # the helpers (tracker, fork server) start once
    assert run(t.sq, range(4)) == [0, 1, 4, 9]
    stop()
    del pool, run, stop
    gc.collect()
    wait_until(lambda: not children(), 10, 'the first pool to stop')
    before, threads = nfds(), threading.active_count()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fails, oks, notes = 0, 0, set()
    # Limits from "no fd left" to "enough": construction fails at every point on the way
    # (the wakeup pipe, the slots memfd, the selector, each worker's socket and pipes).
    for extra in [*range(0, 14), *range(14, 40, 4)]:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before + extra, hard))
        try:
            pool, run, stop = make(api, method)
            if api == 'executor':  # it starts its workers on first use
                pool.submit(t.sq, 2)
        except OSError as e:
            fails += 1
            notes.update(getattr(e, '__notes__', []))
            continue
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        oks += 1
        assert run(t.sq, range(4)) == [0, 1, 4, 9]
        stop()
        del pool, run, stop
    gc.collect()
    wait_until(lambda: not children(), 10, 'every worker to exit')
    print(json.dumps(dict(fails=fails, oks=oks, before=before, after=nfds(), threads=threads,
                          threads_after=threading.active_count(), notes=sorted(notes)[:3])))
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("api", ["pool", "executor"])
def test_failed_construction_releases_everything(tmp_path, method, api) -> None:  # noqa: ANN001
    res = run(tmp_path, CONSTRUCT, api, method, timeout=150)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["fails"] >= 8, out  # construction failed at several points
    assert out["oks"] >= 1, out  # and worked once fds were enough
    assert out["after"] == out["before"], f"fds leaked: {out}"
    assert out["threads_after"] == out["threads"], out
    assert any("could not start a pool of 2 worker(s)" in n and "EMFILE" in n
               for n in out["notes"]), out
