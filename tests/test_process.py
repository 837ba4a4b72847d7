"""Process: lifecycle, attributes, exit codes and the stdlib's errors, under every start method."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

import polyproc
from polyproc.connection import Pipe, wait

METHODS = ["fork", "spawn", "forkserver"]


# -- targets (module level, so spawn/forkserver children can import them)

def report(conn, *args, **kwargs):
    conn.send((args, kwargs, polyproc.current_process().name, os.getpid()))
    conn.close()


def exit_with(code):
    sys.exit(code)


def raise_error():
    raise ValueError("boom")


def sleep_forever(conn=None):
    if conn is not None:
        conn.send("ready")
    while True:
        time.sleep(0.05)


def report_family(conn):
    parent = polyproc.parent_process()
    conn.send({
        "parent_pid": parent.pid,
        "parent_name": parent.name,
        "parent_alive": parent.is_alive(),
        "name": polyproc.current_process().name,
        "authkey": bytes(polyproc.current_process().authkey),
        "daemon": polyproc.current_process().daemon,
        "start_method": polyproc.get_start_method(),
        "mp_imported": "multiprocessing" in sys.modules,
        "main_name": getattr(sys.modules["__main__"], "__name__", None),
    })
    conn.close()


def try_daemon_child(conn):
    try:
        polyproc.Process(target=exit_with, args=(0,)).start()
    except AssertionError as e:
        conn.send(("AssertionError", str(e)))
    else:
        conn.send(("no error", ""))
    conn.close()


def start_grandchild(conn, method):
    ctx = polyproc.get_context(method)
    p = ctx.Process(target=exit_with, args=(7,))
    p.start()
    ready = wait([p.sentinel], timeout=30)
    p.join(30)
    conn.send((bool(ready), p.exitcode))
    conn.close()


def echo_len(conn, payload):
    conn.send(len(payload))
    conn.close()


class RunOverride:
    def __init__(self, conn):
        super().__init__()
        self.conn = conn

    def run(self):
        self.conn.send("run overridden")
        self.conn.close()


class Subclass(RunOverride, polyproc.Process):
    pass


SUBCLASSES = {
    "fork": type("ForkSub", (RunOverride, polyproc.context.ForkProcess), {}),
    "spawn": type("SpawnSub", (RunOverride, polyproc.context.SpawnProcess), {}),
    "forkserver": type("ForkServerSub", (RunOverride, polyproc.context.ForkServerProcess), {}),
}
for _cls in SUBCLASSES.values():
    _cls.__module__ = __name__
    globals()[_cls.__name__] = _cls


def _recv(conn, timeout=30):
    assert conn.poll(timeout), "child did not answer in time"
    return conn.recv()


@pytest.fixture(params=METHODS)
def ctx(request):
    return polyproc.get_context(request.param)


def test_target_args_kwargs(ctx):
    r, w = Pipe(duplex=False)
    p = ctx.Process(target=report, args=(w, 1, "two"), kwargs={"three": 3}, name="worker-x")
    assert p.pid is None and p.exitcode is None and not p.is_alive()
    p.start()
    w.close()
    args, kwargs, name, pid = _recv(r)
    p.join(30)
    assert (args, kwargs, name) == ((1, "two"), {"three": 3}, "worker-x")
    assert pid == p.pid == p.ident
    assert p.exitcode == 0 and not p.is_alive()


def test_default_name_and_repr(ctx):
    p = ctx.Process(target=exit_with, args=(0,))
    assert p.name.startswith(type(p).__name__ + "-")
    assert "initial" in repr(p)
    p.start()
    p.join(30)
    assert "stopped" in repr(p) and "exitcode=0" in repr(p)


def test_subclass_run(ctx):
    r, w = Pipe(duplex=False)
    p = Subclass(w)
    # The default-context subclass follows the default start method; check ctx's too.
    q = SUBCLASSES[ctx.get_start_method()](w)
    for proc in (p, q):
        proc.start()
        assert _recv(r) == "run overridden"
        proc.join(30)
        assert proc.exitcode == 0


@pytest.mark.parametrize(
    "target,args,expected",
    [(exit_with, (3,), 3), (exit_with, (None,), 0), (exit_with, ("message",), 1),
     (raise_error, (), 1)],
)
def test_exit_codes(ctx, target, args, expected, capfd):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == expected
    if target is raise_error:
        assert "ValueError: boom" in capfd.readouterr().err


@pytest.mark.parametrize("how,signum", [("terminate", signal.SIGTERM), ("kill", signal.SIGKILL)])
def test_terminate_and_kill(ctx, how, signum):
    r, w = Pipe(duplex=False)
    p = ctx.Process(target=sleep_forever, args=(w,))
    p.start()
    assert _recv(r) == "ready"
    assert p.is_alive()
    getattr(p, how)()
    p.join(30)
    assert p.exitcode == -signum
    assert not p.is_alive()


def test_join_timeout_and_sentinel(ctx):
    p = ctx.Process(target=sleep_forever)
    p.start()
    t0 = time.monotonic()
    p.join(0.2)
    assert p.is_alive() and p.exitcode is None
    assert time.monotonic() - t0 < 5
    assert wait([p.sentinel], timeout=0) == []
    p.kill()
    assert wait([p.sentinel], timeout=30) == [p.sentinel]
    p.join(30)
    assert p.exitcode == -signal.SIGKILL


def test_stdlib_errors(ctx):
    p = ctx.Process(target=exit_with, args=(0,))
    with pytest.raises(AssertionError, match="can only join a started process"):
        p.join()
    with pytest.raises(ValueError, match="process not started"):
        p.sentinel  # noqa: B018
    p.start()
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    with pytest.raises(AssertionError, match="process has already started"):
        p.daemon = True
    p.join(30)
    p.close()
    p.close()  # closing twice is fine
    for call in (p.start, p.join, p.is_alive, p.terminate, p.kill):
        with pytest.raises(ValueError, match="process object is closed"):
            call()
    with pytest.raises(ValueError, match="process object is closed"):
        p.exitcode  # noqa: B018


def test_close_running_process_refused(ctx):
    p = ctx.Process(target=sleep_forever)
    p.start()
    with pytest.raises(ValueError, match="Cannot close a process while it is still running"):
        p.close()
    p.kill()
    p.join(30)
    p.close()


def test_child_sees_its_family(ctx):
    r, w = Pipe(duplex=False)
    p = ctx.Process(target=report_family, args=(w,), name="kid", daemon=True)
    p.start()
    info = _recv(r)
    p.join(30)
    me = polyproc.current_process()
    assert info["parent_pid"] == os.getpid()
    assert info["parent_name"] == me.name == "MainProcess"
    assert info["parent_alive"] is True
    assert info["name"] == "kid"
    assert info["authkey"] == bytes(me.authkey)
    assert info["daemon"] is True
    assert info["start_method"] == ctx.get_start_method()
    if ctx.get_start_method() != "fork":  # a fork child has whatever pytest imported
        assert info["mp_imported"] is False
        assert info["main_name"] in ("__main__", "__mp_main__")


def test_daemon_cannot_have_children(ctx):
    r, w = Pipe(duplex=False)
    p = ctx.Process(target=try_daemon_child, args=(w,), daemon=True)
    p.start()
    assert _recv(r) == ("AssertionError", "daemonic processes are not allowed to have children")
    p.join(30)


@pytest.mark.parametrize("inner", METHODS)
def test_grandchild(ctx, inner):
    r, w = Pipe(duplex=False)
    p = ctx.Process(target=start_grandchild, args=(w, inner))
    p.start()
    assert _recv(r, 60) == (True, 7)
    p.join(30)
    assert p.exitcode == 0


def test_lambda_and_closure_targets(ctx):
    r, w = Pipe(duplex=False)
    secret = "closure-value"

    def closure():
        w.send(secret)

    for target in (lambda: w.send("lambda-value"), closure):
        p = ctx.Process(target=target)
        p.start()
        p.join(30)
        assert p.exitcode == 0
    assert [_recv(r), _recv(r)] == ["lambda-value", "closure-value"]


def test_large_arguments(ctx):
    payload = b"x" * (3 * 1024 * 1024)  # far bigger than a pipe buffer
    r, w = Pipe(duplex=False)
    p = ctx.Process(target=echo_len, args=(w, payload))
    p.start()
    assert _recv(r) == len(payload)
    p.join(30)


def test_active_children_and_cpu_count(ctx):
    p = ctx.Process(target=sleep_forever)
    p.start()
    try:
        assert p in polyproc.active_children()
    finally:
        p.kill()
        p.join(30)
    assert p not in polyproc.active_children()
    assert polyproc.cpu_count() == os.cpu_count()
    assert polyproc.current_process().name == "MainProcess"
    assert polyproc.parent_process() is None
