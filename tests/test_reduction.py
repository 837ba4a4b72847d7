"""Pickling across processes: the reducer registry, fd passing, cloudpickle fallback."""

from __future__ import annotations

import os
import pickle
import socket

import pytest

import polyproc
from polyproc import reduction
from polyproc.connection import Pipe

METHODS = ["fork", "spawn", "forkserver"]


class Point:
    def __init__(self, x):
        self.x = x


def _reduce_point(p):
    return _rebuild_point, (p.x * 10,)


def _rebuild_point(x):
    return Point(x)


def test_register_custom_reducer():
    reduction.register(Point, _reduce_point)
    try:
        assert pickle.loads(reduction.dumps(Point(2))).x == 20
        assert reduction.ForkingPickler.loads(reduction.ForkingPickler.dumps(Point(3))).x == 30
    finally:
        del reduction._extra_reducers[Point]
    assert pickle.loads(reduction.dumps(Point(2))).x == 2


def test_lambda_and_closure_fall_back_to_cloudpickle():
    k = 5
    f = lambda x: x + k  # noqa: E731
    assert pickle.loads(reduction.dumps(f))(1) == 6

    def outer():
        def inner(y):
            return y * k
        return inner

    assert pickle.loads(reduction.dumps(outer()))(3) == 15


def test_unpicklable_raises_the_original_error():
    import threading

    with pytest.raises(TypeError, match="lock"):
        reduction.dumps(threading.Lock())


def test_sendfds_recvfds_roundtrip():
    a, b = socket.socketpair(socket.AF_UNIX)
    r, w = os.pipe()
    try:
        reduction.sendfds(a, [r, w])
        r2, w2 = reduction.recvfds(b, 2)
        os.write(w2, b"hi")
        assert os.read(r, 2) == b"hi"
        os.close(r2)
        os.close(w2)
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_send_handle_recv_handle():
    c1, c2 = Pipe()
    r, w = os.pipe()
    try:
        reduction.send_handle(c1, w, os.getpid())
        w2 = reduction.recv_handle(c2)
        os.write(w2, b"ok")
        os.close(w2)
        assert os.read(r, 2) == b"ok"
    finally:
        os.close(r)
        os.close(w)


def use_socket(sock, conn):
    sock.sendall(b"from child")
    conn.send("done")


@pytest.mark.parametrize("method", METHODS)
def test_socket_passed_to_child(method):
    ctx = polyproc.get_context(method)
    a, b = socket.socketpair()
    r, w = Pipe(duplex=False)
    with a, b:
        p = ctx.Process(target=use_socket, args=(a, w))
        p.start()
        assert r.poll(30) and r.recv() == "done"
        p.join(30)
        b.settimeout(10)
        assert b.recv(100) == b"from child"


def receive_connection(control):
    conn = control.recv()  # a Connection pickled while this process was already running
    conn.send("hello over a passed connection")
    control.send("ok")


@pytest.mark.parametrize("method", METHODS)
def test_connection_sent_to_running_process(method):
    # Outside process start, fds travel through the per-process fd sharer.
    ctx = polyproc.get_context(method)
    control, child_control = Pipe()
    p = ctx.Process(target=receive_connection, args=(child_control,))
    p.start()
    mine, theirs = Pipe()
    control.send(theirs)
    assert control.poll(30) and control.recv() == "ok"
    assert mine.poll(10) and mine.recv() == "hello over a passed connection"
    p.join(30)
    assert p.exitcode == 0


def test_fd_sharer_same_process():
    from polyproc._resources import fd_sharer

    r, w = os.pipe()
    try:
        df = pickle.loads(pickle.dumps(fd_sharer.DupFd(w)))
        w2 = df.detach()
        os.write(w2, b"x")
        os.close(w2)
        assert os.read(r, 1) == b"x"
    finally:
        os.close(r)
        os.close(w)


def test_authkey_not_picklable_outside_spawning():
    with pytest.raises(TypeError, match="disallowed for security reasons"):
        pickle.dumps(polyproc.current_process().authkey)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_open_file_argument_is_refused_like_the_stdlib(method: str, tmp_path) -> None:  # noqa: ANN001
    # The cloudpickle fallback sends code by value, never a copy of an open file's contents.
    path = tmp_path / "data.txt"
    path.write_text("secret")
    with open(path) as f, polyproc.get_context(method).Pool(1) as pool:
        with pytest.raises(TypeError, match="cannot pickle '_io.TextIOWrapper' object"):
            pool.apply(len, (f,))
        with pytest.raises(TypeError, match="cannot pickle"):
            pool.apply(lambda: f.read())  # a closure over it
        assert pool.apply(len, ("abc",)) == 3
