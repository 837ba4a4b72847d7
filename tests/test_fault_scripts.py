"""The fault matrix of issue #13: the scenarios that need a process of their own.

* a worker that cannot start (its import of the main module raises; a script without the
  main guard): the pool's error names the worker's own error, at once, printed once per
  worker started, not once per retry;
* ``ulimit -n 64``: Pool(4), then queues and pipes until no fd is left;
* a full /dev/shm (a 1 MiB tmpfs mounted over it in a private mount namespace: the real one
  is shared with everything else on the machine);
* polyproc found only through a ``sys.path`` entry added at run time (``python -S``, a
  vendored copy): the deaths, stopping a stuck task, and a worker that cannot start.

Each script asserts its outcomes itself, within deadlines, and prints ``ok``; the test bounds
the whole run and checks that nothing is left behind (``no_leaks``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

import polyproc
from _scripts import SRC

TESTS = str(Path(__file__).resolve().parent)

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(150)]


def run(tmp_path: Path, code: str, *args: str, timeout: float = 120, prefix: tuple = (),
        env: dict | None = None, python: tuple = (sys.executable,)) -> subprocess.CompletedProcess:
    path = tmp_path / "prog.py"
    path.write_text(textwrap.dedent(code))
    if env is None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([SRC, TESTS, env.get("PYTHONPATH", "")])
    return subprocess.run([*prefix, *python, str(path), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(tmp_path), env=env)


def _ok(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0 and res.stdout.split()[-1:] == ["ok"], \
        f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}"


# ---------------------------------------------------------------- workers that cannot start

CHILD_CANNOT_IMPORT_MAIN = """
import sys, time
import polyproc, polyproc.futures as pf

if __name__ != "__main__":  # in a new interpreter only: a config only the parent has
    raise RuntimeError("the config file /etc/app.conf is missing in the child")

def sq(x):
    return x * x

if __name__ == "__main__":
    ctx = polyproc.get_context(sys.argv[1])
    for api in ("pool", "executor"):
        t0 = time.monotonic()
        try:
            if api == "pool":
                with ctx.Pool(2) as pool:
                    pool.map_async(sq, range(4)).get(30)
            else:
                with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                    list(ex.map(sq, range(4), timeout=30))
        except pf.BrokenProcessPool as e:
            took = time.monotonic() - t0
            assert "RuntimeError: the config file /etc/app.conf is missing in the child" \\
                in str(e), str(e)
            assert "could not start" in str(e), str(e)
            assert took < 15, took
        else:
            sys.exit("no error")
        print(api, "broken", flush=True)
    print("ok")
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_worker_that_cannot_import_main_says_why(tmp_path: Path, method: str) -> None:
    """Before: 'pool workers keep dying before running any task (the last, pid N, exited
    with code 1)' after 3 * n attempts, each printing its traceback."""
    res = run(tmp_path, CHILD_CANNOT_IMPORT_MAIN, method)
    _ok(res)
    # Each worker started prints its traceback once: at most 2 per pool, no retries.
    printed = res.stderr.count("RuntimeError: the config file")
    assert 2 <= printed <= 4, res.stderr


UNGUARDED = """
import sys
import polyproc, polyproc.futures as pf

def sq(x):
    return x * x

ctx = polyproc.get_context(sys.argv[1])  # no main guard: children re-run this
if sys.argv[2] == "pool":
    with ctx.Pool(2) as pool:
        print(pool.map_async(sq, range(4)).get(30))
else:
    with pf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        print(list(ex.map(sq, range(4), timeout=30)))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("api", ["pool", "executor"])
def test_script_without_the_main_guard(tmp_path: Path, method: str, api: str) -> None:
    """The stdlib's RuntimeError once per worker started, then a BrokenProcessPool naming it,
    promptly. Before: after 3 * n attempts, the RuntimeError printed twice by each of them
    (once more in a note). The stdlib's Pool respawns forever (hangs); its executor breaks."""
    res = run(tmp_path, UNGUARDED, method, api, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("polyproc.BrokenProcessPool: a pool worker could not start"), last
    assert "RuntimeError: An attempt was made to start a new process" in last, last
    children = [line for line in res.stderr.splitlines() if line.startswith("RuntimeError:")]
    assert 1 <= len(children) <= 2, res.stderr
    assert "[0, 1, 4, 9]" not in res.stdout


# ---------------------------------------------------------------- ulimit -n 64

FD_LIMIT = """
import os, resource, sys, time
import polyproc, polyproc.futures as pf
import _fault_targets as ft

def nfds():
    return len(os.listdir("/proc/self/fd"))

def until_emfile(make):
    made = []
    while True:
        try:
            made.append(make())
        except OSError as e:
            assert e.errno == 24, e  # EMFILE: what ran out, as the stdlib says it
            return made
        assert len(made) < 64, "more objects than fds"

if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    for method in ("fork", "spawn", "forkserver"):
        ctx = polyproc.get_context(method)
        t0 = time.monotonic()
        with ctx.Pool(4) as pool:
            assert pool.map(ft.sq, range(16)) == [x * x for x in range(16)]
            base = nfds()
            queues = until_emfile(ctx.Queue)
            assert len(queues) >= 5, len(queues)
            for q in queues[:3]:
                q.put(b"x" * 100_000)
                assert len(q.get(timeout=10)) == 100_000
            for q in queues:
                q.close()
                q.join_thread()
            del queues, q  # released at once (before: only by the next cyclic GC)
            assert nfds() <= base, (nfds(), base)
            pipes = until_emfile(ctx.Pipe)
            assert len(pipes) >= 5, len(pipes)
            a, b = pipes[0]
            a.send("ping")
            assert b.recv() == "ping"
            for a, b in pipes:
                a.close()
                b.close()
            del pipes, a, b
            assert nfds() <= base, (nfds(), base)
            assert pool.map(ft.sq, range(16)) == [x * x for x in range(16)]
        with pf.ProcessPoolExecutor(4, mp_context=ctx) as ex:
            assert list(ex.map(ft.sq, range(16))) == [x * x for x in range(16)]
        assert time.monotonic() - t0 < 30
        print(method, "fds", nfds(), flush=True)
    print("ok")
"""


def test_fd_limit_of_64(tmp_path: Path) -> None:
    res = run(tmp_path, FD_LIMIT)
    _ok(res)
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr, res.stderr


# ---------------------------------------------------------------- a full /dev/shm

SHM_FULL = """
import errno, os, sys
import polyproc
from polyproc.shared_memory import SharedMemory
import _fault_targets as ft

def refused(make, what):
    try:
        make()
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        assert "/dev/shm" in str(e) and "--shm-size" in str(e), str(e)
        return
    sys.exit(f"{what}: no error")

if __name__ == "__main__":
    with open("/dev/shm/filler", "wb", buffering=0) as f:  # fill the private 1 MiB one
        try:
            while True:
                f.write(b"\\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    # Before: created, then the process died of SIGBUS writing it.
    refused(lambda: SharedMemory(create=True, size=8 << 20), "SharedMemory")
    # Before: a bare 'OSError: [Errno 28] No space left on device'.
    refused(lambda: polyproc.get_context("spawn").Lock(), "a spawn Lock")
    assert not [n for n in os.listdir("/dev/shm") if n != "filler"], os.listdir("/dev/shm")
    # Queues, pools, Pipe and Value/Array without a named lock use anonymous memory: unaffected.
    for method in ("fork", "spawn", "forkserver"):
        ctx = polyproc.get_context(method)
        q = ctx.Queue()
        q.put(b"y" * (8 << 20))
        assert len(q.get(timeout=30)) == 8 << 20
        q.close()
        a = ctx.Array("d", 1_000_000, lock=False)
        a[-1] = 1.5
        with ctx.Pool(2) as pool:
            assert pool.map(ft.size, [bytearray(4 << 20)] * 3) == [4 << 20] * 3
        print(method, "ok", flush=True)
    os.unlink("/dev/shm/filler")
    print("ok")
"""


def _private_dev_shm() -> tuple[str, ...] | None:
    """A command prefix that runs its command with a private 1 MiB /dev/shm, or None."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        return None
    script = "mount -t tmpfs -o size=1m tmpfs /dev/shm && exec \"$@\""
    for flags in (("-m",), ("-r", "-m")):  # as root; else in a user namespace
        prefix = ("unshare", *flags, "--propagation", "private", "sh", "-c", script, "sh")
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return None


def test_dev_shm_full(tmp_path: Path) -> None:
    prefix = _private_dev_shm()
    if prefix is None:
        pytest.skip("cannot mount a private /dev/shm here (needs unshare -m: root or user "
                    "namespaces)")
    res = run(tmp_path, SHM_FULL, prefix=prefix)
    _ok(res)


# ---------------------------------------------------------------- polyproc on a runtime sys.path

RUNTIME_PATH = """
import os, sys, time
sys.path.insert(0, {vendored!r})
sys.path.append({deps!r})  # cloudpickle, without the installed polyproc
import polyproc
import polyproc.futures as pf
from concurrent.futures import CancelledError
assert polyproc.__file__.startswith({vendored!r}), polyproc.__file__

FLAG = {flag!r}
if __name__ != "__main__" and os.path.exists(FLAG):
    raise RuntimeError("cannot start: a setting only the parent has")

def limit_memory(headroom=256 << 20):
    import resource
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    limit = pages * os.sysconf("SC_PAGE_SIZE") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))

def fault(x):
    import ctypes, faulthandler, resource, signal
    faulthandler.disable()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if x == "exit": os._exit(3)
    if x == "abort": os.abort()
    if x == "segv": ctypes.string_at(0)
    if x == "kill": os.kill(os.getpid(), signal.SIGKILL)
    if x == "oom": return len(bytearray(1 << 30))
    if x == "sys.exit": sys.exit(4)
    return x * 2

def spin(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    while True:
        pass

def wait_file(path, timeout=30):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.005)

ITEMS = [1, "exit", 2, "abort", 3, "segv", 4, "kill", 5, "oom", 6, "sys.exit", 7]
DEATHS = {{"exit": "exited with code 3", "abort": "SIGABRT", "segv": "SIGSEGV",
          "kill": "SIGKILL"}}

def check(outcomes):
    for x, o in zip(ITEMS, outcomes, strict=True):
        if x in DEATHS:
            assert isinstance(o, polyproc.WorkerLostError) and DEATHS[x] in str(o), (x, o)
        elif x == "oom":
            assert type(o) is MemoryError, (x, o)
        elif x == "sys.exit":
            assert isinstance(o, SystemExit) and o.args == (4,), (x, o)
        else:
            assert o == x * 2, (x, o)

def outcome(get):
    try:
        return get()
    except BaseException as e:
        return e

if __name__ == "__main__":
    for method in ("fork", "spawn", "forkserver"):
        ctx = polyproc.get_context(method)
        t0 = time.monotonic()
        with ctx.Pool(2, initializer=limit_memory) as pool:
            check([outcome(lambda r=r: r.get(30))
                   for r in [pool.apply_async(fault, (x,)) for x in ITEMS]])
            stuck = pool.apply_async(spin, (f"{{method}}-a",))
            wait_file(f"{{method}}-a")
            assert stuck.terminate() is True
            try:
                stuck.get(10)
                raise AssertionError("not stopped")
            except CancelledError:
                pass
            assert pool.map(fault, range(10)) == [x * 2 for x in range(10)]
            stuck = pool.apply_async(spin, (f"{{method}}-b",))
            wait_file(f"{{method}}-b")
            t1 = time.monotonic()
            pool.terminate()
            pool.join()
            assert time.monotonic() - t1 < 5
        with pf.ProcessPoolExecutor(2, mp_context=ctx, initializer=limit_memory) as ex:
            check([outcome(lambda f=f: f.result(30)) for f in [ex.submit(fault, x) for x in ITEMS]])
            stuck = ex.submit(spin, f"{{method}}-c")
            wait_file(f"{{method}}-c")
            queued = [ex.submit(fault, i) for i in range(4)]
            t1 = time.monotonic()
            ex.shutdown(wait=False, cancel_futures=True)
            assert stuck.terminate() is True
            assert isinstance(outcome(lambda: stuck.result(10)), CancelledError)
            assert all(f.cancelled() or f.result(10) == 2 * i for i, f in enumerate(queued))
            assert time.monotonic() - t1 < 10
        assert time.monotonic() - t0 < 40, time.monotonic() - t0
        print(method, "ok", flush=True)
    open(FLAG, "w").close()  # from now on, new interpreters fail to import this module
    try:
        with polyproc.get_context("spawn").Pool(2) as pool:
            pool.map(fault, range(4))
        raise AssertionError("no error")
    except polyproc.BrokenProcessPool as e:
        assert "RuntimeError: cannot start: a setting only the parent has" in str(e), str(e)
    print("ok")
"""


def test_faults_with_polyproc_only_on_a_runtime_path(tmp_path: Path) -> None:
    """The main death and stop scenarios, with ``python -S`` and a vendored copy of polyproc
    put on ``sys.path`` by the script (see tests/test_runtime_path.py)."""
    vendored = tmp_path / "vendor"
    shutil.copytree(Path(polyproc.__file__).parent, vendored / "polyproc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    deps = tmp_path / "deps"
    shutil.copytree(Path(cloudpickle.__file__).parent, deps / "cloudpickle",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = RUNTIME_PATH.format(vendored=str(vendored), deps=str(deps),
                               flag=str(tmp_path / "break-children"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = run(tmp_path, code, env=env, python=(sys.executable, "-S"), timeout=140)
    _ok(res)
    assert res.stdout.split() == ["fork", "ok", "spawn", "ok", "forkserver", "ok", "ok"]
