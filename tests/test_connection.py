"""polyproc.connection: Connection, Pipe, wait, Listener/Client and the auth handshake."""

from __future__ import annotations

import array
import fcntl
import os
import resource
import signal
import socket
import struct
import threading
import time

import pytest

import polyproc
from polyproc import connection
from polyproc._wire import auth, framing
from polyproc.connection import (
    Client,
    Connection,
    Listener,
    Pipe,
    address_type,
    arbitrary_address,
    wait,
)

METHODS = ["fork", "spawn", "forkserver"]
TIMEOUT = 10.0  # generous upper bound for anything that should happen "soon"
MiB = 1 << 20


@pytest.fixture(params=[True, False], ids=["duplex", "simplex"])
def pipe(request):
    """(reader, writer) of a duplex or a simplex Pipe, closed after the test."""
    if request.param:
        reader, writer = Pipe()
    else:
        reader, writer = Pipe(duplex=False)
    yield reader, writer
    reader.close()
    writer.close()


def in_thread(fn, *args):
    """Run fn(*args) in a daemon thread; return a join() that re-raises its exception."""
    errors = []

    def run():
        try:
            fn(*args)
        except BaseException as exc:  # re-raised in the test thread
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join():
        t.join(TIMEOUT)
        assert not t.is_alive(), "helper thread hung"
        if errors:
            raise errors[0]

    return join


# ---------------------------------------------------------------- construction and state


def test_pipe_types_and_flags():
    a, b = Pipe()
    r, w = Pipe(duplex=False)
    with a, b, r, w:
        for c in (a, b, r, w):
            assert isinstance(c, Connection)
            assert not c.closed
            assert isinstance(c.fileno(), int)
            assert not os.get_inheritable(c.fileno())
        assert a.readable and a.writable and b.readable and b.writable
        assert r.readable and not r.writable
        assert w.writable and not w.readable


def test_invalid_construction():
    with pytest.raises(ValueError, match="invalid handle"):
        Connection(-1)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="at least one"):
            Connection(r, readable=False, writable=False)
        with pytest.raises(TypeError):
            Connection("3")
    finally:
        os.close(r)
        os.close(w)


def test_close_is_idempotent_and_closed_errors():
    a, b = Pipe()
    fd = a.fileno()
    a.close()
    a.close()
    assert a.closed
    with pytest.raises(OSError, match="handle is closed"):
        a.fileno()
    for call in (lambda: a.send(1), lambda: a.send_bytes(b"x"), a.recv, a.recv_bytes,
                 lambda: a.recv_bytes_into(bytearray(4)), a.poll):
        with pytest.raises(OSError, match="handle is closed"):
            call()
    with pytest.raises(OSError):
        os.fstat(fd)  # the fd really was closed
    b.close()


def test_context_manager_closes():
    a, b = Pipe()
    with a as entered:
        assert entered is a
    assert a.closed
    b.close()


def test_direction_errors():
    r, w = Pipe(duplex=False)
    with r, w:
        with pytest.raises(OSError, match="connection is read-only"):
            r.send(1)
        with pytest.raises(OSError, match="connection is read-only"):
            r.send_bytes(b"x")
        with pytest.raises(OSError, match="connection is write-only"):
            w.recv()
        with pytest.raises(OSError, match="connection is write-only"):
            w.recv_bytes()
        with pytest.raises(OSError, match="connection is write-only"):
            w.recv_bytes_into(bytearray(1))
        with pytest.raises(OSError, match="connection is write-only"):
            w.poll()


def test_garbage_collection_closes_fd():
    a, b = Pipe()
    fd = a.fileno()
    del a
    with pytest.raises(OSError):
        os.fstat(fd)
    b.close()


# ---------------------------------------------------------------- send / recv


@pytest.mark.parametrize(
    "obj",
    [None, 0, -1, 3.5, "text", b"bytes", [1, [2, (3,)]], {"k": {1, 2}}, (), "x" * 20_000],
    ids=lambda obj: type(obj).__name__,
)
def test_send_recv_objects(pipe, obj):  # each fits the pipe buffer, so one thread suffices
    r, w = pipe
    w.send(obj)
    assert r.recv() == obj


def test_duplex_both_directions():
    a, b = Pipe()
    with a, b:
        a.send("a->b")
        b.send("b->a")
        assert b.recv() == "a->b"
        assert a.recv() == "b->a"


def test_messages_keep_order_and_boundaries(pipe):
    r, w = pipe
    for i in range(50):
        w.send_bytes(bytes([i]) * i)
    for i in range(50):
        assert r.recv_bytes() == bytes([i]) * i


def test_empty_message(pipe):
    r, w = pipe
    w.send_bytes(b"")
    w.send_bytes(b"after")
    assert r.recv_bytes() == b""
    assert r.recv_bytes() == b"after"


def test_send_bytes_accepts_buffers(pipe):
    r, w = pipe
    w.send_bytes(bytearray(b"abc"))
    w.send_bytes(memoryview(b"defgh")[1:4])
    w.send_bytes(array.array("i", [1, 2, 3]))
    assert r.recv_bytes() == b"abc"
    assert r.recv_bytes() == b"efg"
    assert r.recv_bytes() == array.array("i", [1, 2, 3]).tobytes()


def test_send_bytes_offset_and_size(pipe):
    r, w = pipe
    w.send_bytes(b"0123456789", 2)
    w.send_bytes(b"0123456789", 2, 3)
    w.send_bytes(b"0123456789", 10)
    w.send_bytes(b"0123456789", 0, 0)
    ints = array.array("i", [1, 2, 3, 4])
    w.send_bytes(ints, ints.itemsize, 2 * ints.itemsize)  # offset/size count bytes
    assert r.recv_bytes() == b"23456789"
    assert r.recv_bytes() == b"234"
    assert r.recv_bytes() == b""
    assert r.recv_bytes() == b""
    assert r.recv_bytes() == array.array("i", [2, 3]).tobytes()


@pytest.mark.parametrize(
    ("offset", "size", "message"),
    [(-1, None, "offset is negative"), (11, None, "buffer length < offset"),
     (0, -1, "size is negative"), (5, 6, "buffer length < offset \\+ size")],
)
def test_send_bytes_bad_offset_or_size(offset, size, message):
    r, w = Pipe(duplex=False)
    with r, w:
        with pytest.raises(ValueError, match=message):
            w.send_bytes(b"0123456789", offset, size)
        assert not r.poll()  # nothing was written


def test_unpicklable_object_writes_nothing(pipe):
    r, w = pipe
    with pytest.raises(TypeError):
        w.send(threading.Lock())
    w.send("next")
    assert r.recv() == "next"


@pytest.mark.parametrize("size", [64 * 1024 + 1, MiB, 3 * MiB + 7])
def test_large_messages(pipe, size):
    r, w = pipe
    payload = os.urandom(1024) * (size // 1024) + b"z" * (size % 1024)
    join = in_thread(w.send_bytes, payload)
    assert r.recv_bytes() == payload
    join()
    join = in_thread(w.send, {"data": payload})
    assert r.recv() == {"data": payload}
    join()
    buf = bytearray(size + 10)
    join = in_thread(w.send_bytes, payload)
    assert r.recv_bytes_into(buf, 10) == size
    join()
    assert buf[10:] == payload


def test_large_message_concurrent_both_ways():
    # Both sides send 4 MiB before reading: needs a thread per side, must not deadlock.
    a, b = Pipe()
    payload = b"p" * (4 * MiB)
    with a, b:
        join = in_thread(b.send_bytes, payload)
        join2 = in_thread(a.send_bytes, payload)
        assert a.recv_bytes() == payload
        assert b.recv_bytes() == payload
        join()
        join2()


def test_extended_length_header_is_read(pipe):
    r, w = pipe
    os.write(w.fileno(), struct.pack("!iQ", -1, 5) + b"hello")
    assert r.recv_bytes() == b"hello"


def test_extended_length_header_is_written(pipe, monkeypatch):
    r, w = pipe
    monkeypatch.setattr(framing, "MAX_SHORT_LENGTH", 100)
    payload = b"q" * 50_000
    w.send_bytes(payload)
    fd = r.fileno()
    assert os.read(fd, 12) == struct.pack("!iQ", -1, len(payload))
    got = b""
    while len(got) < len(payload):
        got += os.read(fd, len(payload) - len(got))
    assert got == payload


# ---------------------------------------------------------------- recv_bytes limits


def test_recv_bytes_maxlength(pipe):
    r, w = pipe
    w.send_bytes(b"x" * 10)
    w.send_bytes(b"y" * 11)
    assert r.recv_bytes(10) == b"x" * 10
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(10)
    # Like the stdlib: the stream is out of sync, so reading is disabled for good.
    if r.writable:
        assert not r.readable and not r.closed
        with pytest.raises(OSError, match="write-only"):
            r.recv_bytes()
    else:
        assert r.closed


def test_recv_bytes_negative_maxlength(pipe):
    r, w = pipe
    with pytest.raises(ValueError, match="negative maxlength"):
        r.recv_bytes(-1)


def test_bad_negative_length_header(pipe):
    r, w = pipe
    os.write(w.fileno(), struct.pack("!i", -5))
    with pytest.raises(OSError, match="bad message length"):
        r.recv()


# ---------------------------------------------------------------- recv_bytes_into


def test_recv_bytes_into(pipe):
    r, w = pipe
    w.send_bytes(b"hello")
    buf = bytearray(8)
    assert r.recv_bytes_into(buf) == 5
    assert buf == b"hello\0\0\0"
    w.send_bytes(b"abc")
    assert r.recv_bytes_into(buf, 5) == 3
    assert buf == b"helloabc"


def test_recv_bytes_into_array_offset_in_bytes(pipe):
    r, w = pipe
    w.send_bytes(array.array("i", [7, 8]))
    target = array.array("i", [0, 0, 0])
    assert r.recv_bytes_into(target, target.itemsize) == 2 * target.itemsize
    assert list(target) == [0, 7, 8]


def test_recv_bytes_into_too_short(pipe):
    r, w = pipe
    w.send_bytes(b"0123456789")
    w.send_bytes(b"next")
    with pytest.raises(polyproc.BufferTooShort) as info:
        r.recv_bytes_into(bytearray(9))
    assert info.value.args[0] == b"0123456789"
    assert isinstance(info.value, polyproc.ProcessError)
    with pytest.raises(polyproc.BufferTooShort):
        r.recv_bytes_into(bytearray(8), 5)
    w.send_bytes(b"ok")
    assert r.recv_bytes() == b"ok"  # the stream stayed in sync


def test_recv_bytes_into_bad_arguments(pipe):
    r, w = pipe
    with pytest.raises(ValueError, match="negative offset"):
        r.recv_bytes_into(bytearray(4), -1)
    with pytest.raises(ValueError, match="offset too large"):
        r.recv_bytes_into(bytearray(4), 5)
    with pytest.raises(TypeError):
        r.recv_bytes_into(b"read-only")
    w.send_bytes(b"still here")
    assert r.recv_bytes() == b"still here"  # argument errors consume nothing


# ---------------------------------------------------------------- end of stream


def test_eof_after_peer_closes(pipe):
    r, w = pipe
    w.send("last")
    w.close()
    assert r.recv() == "last"
    with pytest.raises(EOFError):
        r.recv()
    with pytest.raises(EOFError):
        r.recv_bytes()
    with pytest.raises(EOFError):
        r.recv_bytes_into(bytearray(4))


def test_eof_unblocks_blocked_reader(pipe):
    r, w = pipe
    started = threading.Event()
    result = []

    def reader():
        started.set()
        try:
            r.recv()
        except EOFError:
            result.append("eof")

    join = in_thread(reader)
    started.wait(TIMEOUT)
    w.close()
    join()
    assert result == ["eof"]


def test_eof_in_the_middle_of_a_frame(pipe):
    r, w = pipe
    os.write(w.fileno(), b"\0\0")
    w.close()
    with pytest.raises(OSError, match="end of file during message"):
        r.recv_bytes()


def test_eof_in_the_middle_of_a_payload(pipe):
    r, w = pipe
    os.write(w.fileno(), struct.pack("!i", 10) + b"abc")
    w.close()
    with pytest.raises(OSError, match="end of file during message"):
        r.recv_bytes()


def test_send_to_closed_peer_raises(pipe):
    r, w = pipe
    r.close()
    with pytest.raises(OSError):  # BrokenPipeError: Python ignores SIGPIPE
        w.send_bytes(b"x" * MiB)


# ---------------------------------------------------------------- poll


def test_poll(pipe):
    r, w = pipe
    assert r.poll() is False
    assert r.poll(0) is False
    assert r.poll(-1) is False
    start = time.monotonic()
    assert r.poll(0.05) is False
    assert time.monotonic() - start >= 0.045
    w.send(1)
    assert r.poll() is True
    assert r.poll(None) is True
    assert r.recv() == 1
    assert r.poll() is False


def test_poll_reads_nothing_beyond_the_frame(pipe):
    r, w = pipe
    w.send("one")
    w.send("two")
    assert r.recv() == "one"
    assert r.poll()
    assert wait([r], 0) == [r]
    assert r.recv() == "two"
    assert not r.poll()
    assert wait([r], 0) == []


def test_poll_none_blocks_until_data(pipe):
    r, w = pipe
    polling = threading.Event()

    def sender():
        polling.wait(TIMEOUT)
        w.send("late")

    join = in_thread(sender)
    polling.set()
    assert r.poll(None)
    assert r.recv() == "late"
    join()


def test_poll_true_on_hangup(pipe):
    r, w = pipe
    w.close()
    assert r.poll(TIMEOUT)


def test_poll_and_wait_with_fd_above_1024():
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("RLIMIT_NOFILE too low for an fd above 1024")
    a, b = Pipe()
    high = fcntl.fcntl(a.fileno(), fcntl.F_DUPFD_CLOEXEC, 1100)
    a.close()
    with Connection(high) as a, b:
        assert a.fileno() >= 1100
        assert not a.poll()
        assert wait([a], 0) == []
        b.send("high")
        assert a.poll(TIMEOUT)
        assert wait([a], TIMEOUT) == [a]
        assert a.recv() == "high"


def test_recv_survives_signals():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    a, b = Pipe()
    fired = []
    interrupted_enough = threading.Event()

    def handler(signum, frame):
        fired.append(signum)
        if len(fired) >= 3:
            interrupted_enough.set()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with a, b:
            signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
            # The answer only comes once the blocked recv() has been interrupted 3 times.
            join = in_thread(lambda: (interrupted_enough.wait(TIMEOUT), b.send("after signals")))
            assert a.recv() == "after signals"
            join()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(fired) >= 3


# ---------------------------------------------------------------- wait


def test_wait_several_connections():
    pairs = [Pipe() for _ in range(4)]
    try:
        readers = [a for a, _ in pairs]
        assert wait(readers, 0) == []
        pairs[1][1].send(1)
        pairs[3][1].send(3)
        assert wait(readers, TIMEOUT) == [readers[1], readers[3]]
        assert readers[1].recv() == 1
        assert wait(readers, TIMEOUT) == [readers[3]]
        pairs[0][1].close()  # hang-up counts as ready
        assert wait(iter(readers), TIMEOUT) == [readers[0], readers[3]]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_wait_timeout():
    a, b = Pipe()
    with a, b:
        start = time.monotonic()
        assert wait([a], 0.05) == []
        assert time.monotonic() - start >= 0.045
        assert wait([a], -1) == []
        assert wait([], 0) == []


def test_wait_none_blocks_until_ready():
    a, b = Pipe()
    with a, b:
        waiting = threading.Event()
        join = in_thread(lambda: (waiting.wait(TIMEOUT), b.send("x")))
        waiting.set()
        assert wait([a], None) == [a]
        join()


def test_wait_accepts_fds_and_sockets():
    a, b = Pipe()
    s1, s2 = socket.socketpair()
    r, w = os.pipe()
    try:
        objects = [a, s1, r]
        assert wait(objects, 0) == []
        s2.send(b"s")
        os.write(w, b"p")
        assert wait(objects, TIMEOUT) == [s1, r]
    finally:
        for c in (a, b, s1, s2):
            c.close()
        os.close(r)
        os.close(w)


def test_wait_rejects_closed_connection():
    a, b = Pipe()
    a.close()
    with pytest.raises(OSError, match="handle is closed"):
        wait([a], 0)
    b.close()


# ---------------------------------------------------------------- child processes


def child_echo(conn):
    """Echo objects back until None, then reply with its own pid."""
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)
    conn.send_bytes(str(os.getpid()).encode())
    conn.close()


def child_simplex(reader, writer):
    writer.send(("got", reader.recv()))
    writer.send_bytes(reader.recv_bytes())


def child_forward_connection(control):
    conn = control.recv()
    conn.send("via passed connection")
    control.send("done")


def finish(process):
    process.join(TIMEOUT * 3)
    assert process.exitcode == 0


@pytest.mark.parametrize("method", METHODS)
def test_duplex_connection_in_child_args(method):
    ctx = polyproc.get_context(method)
    parent, child = ctx.Pipe()
    p = ctx.Process(target=child_echo, args=(child,))
    p.start()
    child.close()
    with parent:
        for obj in ["hello", {"n": list(range(10))}, b"b" * (MiB + 3)]:
            parent.send(obj)
            assert parent.poll(TIMEOUT * 3)
            assert parent.recv() == obj
        parent.send(None)
        assert parent.poll(TIMEOUT)
        assert int(parent.recv_bytes()) == p.pid
        assert parent.poll(TIMEOUT)
        with pytest.raises(EOFError):
            parent.recv()
    finish(p)


@pytest.mark.parametrize("method", METHODS)
def test_simplex_connections_in_child_args(method):
    ctx = polyproc.get_context(method)
    to_child_r, to_child_w = ctx.Pipe(duplex=False)
    from_child_r, from_child_w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=child_simplex, args=(to_child_r, from_child_w))
    p.start()
    to_child_r.close()
    from_child_w.close()
    with to_child_w, from_child_r:
        to_child_w.send([1, 2])
        to_child_w.send_bytes(b"raw")
        assert from_child_r.poll(TIMEOUT * 3)
        assert from_child_r.recv() == ("got", [1, 2])
        assert from_child_r.recv_bytes() == b"raw"
    finish(p)


@pytest.mark.parametrize("method", METHODS)
def test_connection_sent_over_connection(method):
    ctx = polyproc.get_context(method)
    control, child_control = ctx.Pipe()
    p = ctx.Process(target=child_forward_connection, args=(child_control,))
    p.start()
    child_control.close()
    mine, theirs = Pipe()
    with control, mine:
        control.send(theirs)
        theirs.close()
        assert control.poll(TIMEOUT * 3) and control.recv() == "done"
        assert mine.poll(TIMEOUT) and mine.recv() == "via passed connection"
    finish(p)


def test_fork_child_via_os_fork():
    a, b = Pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            a.close()
            b.send(b.recv() * 2)
            code = 0
        finally:
            os._exit(code)
    b.close()
    with a:
        a.send(21)
        assert a.poll(TIMEOUT) and a.recv() == 42
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ---------------------------------------------------------------- addresses


def test_address_type():
    assert address_type(("localhost", 0)) == "AF_INET"
    assert address_type("/tmp/sock") == "AF_UNIX"
    assert address_type("\0abstract") == "AF_UNIX"
    assert address_type(b"\0abstract") == "AF_UNIX"
    assert address_type("\\\\.\\pipe\\x") == "AF_PIPE"
    for bad in (["localhost", 0], 42, b"/tmp/sock"):
        with pytest.raises(ValueError, match="unrecognized"):
            address_type(bad)


def test_arbitrary_address():
    assert arbitrary_address("AF_INET") == ("localhost", 0)
    a, b = arbitrary_address("AF_UNIX"), arbitrary_address("AF_UNIX")
    assert a != b
    directory = os.path.dirname(a)
    assert os.path.isdir(directory)
    assert os.stat(directory).st_mode & 0o777 == 0o700
    assert not os.path.exists(a)
    with pytest.raises(ValueError, match="unrecognized family"):
        arbitrary_address("AF_NOPE")


def test_module_exports():
    assert connection.__all__ == ["Client", "Listener", "Pipe", "wait"]
    assert connection.AuthenticationError is polyproc.AuthenticationError
    assert connection.BufferTooShort is polyproc.BufferTooShort
    assert connection.deliver_challenge is auth.deliver_challenge
    assert connection.answer_challenge is auth.answer_challenge
    assert connection.families == ["AF_INET", "AF_UNIX"]
    assert connection.default_family == "AF_UNIX"


# ---------------------------------------------------------------- Listener / Client


def serve_once(listener, handler=None):
    """Accept one connection in a thread; handler(conn) runs there (default: echo one)."""
    accepted = []

    def run():
        conn = listener.accept()
        accepted.append(conn)
        if handler is None:
            conn.send(conn.recv())
        else:
            handler(conn)

    join = in_thread(run)
    return join, accepted


FAMILIES = ["AF_UNIX", "AF_INET"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("authkey", [None, b"secret"], ids=["noauth", "auth"])
def test_listener_client_roundtrip(family, authkey):
    with Listener(family=family, authkey=authkey) as listener:
        assert address_type(listener.address) == family
        assert listener.last_accepted is None
        join, accepted = serve_once(listener)
        with Client(listener.address, authkey=authkey) as client:
            client.send({"hello": family})
            assert client.poll(TIMEOUT)
            assert client.recv() == {"hello": family}
            join()
            accepted[0].close()
        if family == "AF_INET":
            assert listener.last_accepted[0] == "127.0.0.1"


def test_listener_defaults_to_unix_and_removes_socket_file():
    listener = Listener()
    path = listener.address
    assert address_type(path) == "AF_UNIX"
    assert os.path.exists(path)
    listener.close()
    listener.close()
    assert not os.path.exists(path)
    assert listener.address == path
    with pytest.raises(OSError, match="listener is closed"):
        listener.accept()


def test_unix_socket_file_and_temp_dir_removed_at_exit(tmp_path):
    from _scripts import run_script

    result = run_script(tmp_path, """
        import os
        from polyproc.connection import Listener
        listener = Listener(family="AF_UNIX")  # deliberately never closed
        print(listener.address)
        print(os.path.dirname(listener.address))
        explicit = Listener(os.path.join(os.getcwd(), "explicit.sock"))
        print(explicit.address)
    """, timeout=60)
    assert result.returncode == 0, result.stderr
    path, directory, explicit = result.stdout.split()
    assert not os.path.exists(path)
    assert not os.path.exists(directory)
    assert not os.path.exists(explicit)


def test_listener_explicit_addresses(tmp_path):
    path = str(tmp_path / "explicit.sock")
    with Listener(path) as listener:
        assert listener.address == path
        join, accepted = serve_once(listener)
        with Client(path) as client:
            client.send(1)
            assert client.recv() == 1
        join()
        accepted[0].close()
    assert not os.path.exists(path)
    with Listener(("127.0.0.1", 0)) as listener:
        host, port = listener.address
        assert host == "127.0.0.1" and port > 0


def test_abstract_unix_address():
    if not os.uname().sysname == "Linux":
        pytest.skip("abstract sockets are Linux-only")
    name = f"\0polyproc-test-{os.getpid()}-{os.urandom(4).hex()}"
    with Listener(name) as listener:
        join, accepted = serve_once(listener)
        with Client(name) as client:
            client.send("abstract")
            assert client.recv() == "abstract"
        join()
        accepted[0].close()


def test_tcp_nodelay_on_inet_connections():
    with Listener(family="AF_INET") as listener:
        join, accepted = serve_once(listener, handler=lambda conn: None)
        with Client(listener.address) as client:
            join()
            for conn in (client, accepted[0]):
                with socket.socket(fileno=os.dup(conn.fileno())) as s:
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            accepted[0].close()


def test_listener_backlog_and_several_clients():
    with Listener(family="AF_UNIX", backlog=5) as listener:
        clients = [Client(listener.address) for _ in range(3)]
        served = [listener.accept() for _ in range(3)]
        for i, c in enumerate(clients):
            c.send(i)
        assert sorted(s.recv() for s in served) == [0, 1, 2]
        for c in clients + served:
            c.close()


def test_family_and_authkey_validation():
    with pytest.raises(ValueError, match="AF_PIPE"):
        Listener(family="AF_PIPE")
    with pytest.raises(ValueError, match="AF_PIPE"):
        Client("\\\\.\\pipe\\nothing")
    with pytest.raises(ValueError):
        Listener(family="AF_BOGUS")
    with pytest.raises(TypeError, match="authkey should be a byte string"):
        Listener(authkey="text")
    with pytest.raises(TypeError, match="authkey should be a byte string"):
        Client(("localhost", 1), authkey="text")


def test_client_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Client(str(tmp_path / "missing.sock"))
    with Listener(family="AF_INET") as listener:
        port = listener.address[1]
    with pytest.raises(ConnectionRefusedError):
        Client(("127.0.0.1", port))


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_authkey_fails_on_both_sides(family):
    with Listener(family=family, authkey=b"right") as listener:
        outcome = []

        def accept():
            try:
                listener.accept()
            except polyproc.AuthenticationError as exc:
                outcome.append(exc)

        join = in_thread(accept)
        with pytest.raises(polyproc.AuthenticationError):
            Client(listener.address, authkey=b"wrong")
        join()
        assert len(outcome) == 1


def test_authkey_on_one_side_only_does_not_pass():
    with Listener(authkey=b"key") as listener:
        outcome = []

        def accept():
            try:
                listener.accept()
            except (polyproc.AuthenticationError, EOFError, OSError) as exc:
                outcome.append(exc)

        join = in_thread(accept)
        with Client(listener.address) as client:  # no key: never answers the challenge
            assert client.poll(TIMEOUT)
            assert client.recv_bytes().startswith(b"#CHALLENGE#")
            client.send_bytes(b"not a digest")
            assert client.recv_bytes() == b"#FAILURE#"
        join()
        assert isinstance(outcome[0], polyproc.AuthenticationError)


def test_empty_authkey_means_no_authentication():
    with Listener(authkey=b"") as listener:
        join, accepted = serve_once(listener)
        with Client(listener.address, authkey=b"") as client:
            client.send("open")
            assert client.recv() == "open"
        join()
        accepted[0].close()


# ---------------------------------------------------------------- handshake details


def handshake(server_fn, client_fn):
    """Run server_fn(conn) in a thread and client_fn(conn) here over a Pipe; return the
    exceptions each raised (or None)."""
    a, b = Pipe()
    results = {}

    def server():
        try:
            server_fn(a)
            results["server"] = None
        except Exception as exc:
            results["server"] = exc

    join = in_thread(server)
    try:
        client_fn(b)
        client_result = None
    except Exception as exc:
        client_result = exc
    join()
    a.close()
    b.close()
    return results["server"], client_result


@pytest.mark.parametrize("digest", [None, "md5", "sha256", "sha384", "sha3_256", "sha3_384"])
def test_handshake_dialects(digest):
    server, client = handshake(lambda c: auth.deliver_challenge(c, b"k", digest),
                               lambda c: auth.answer_challenge(c, b"k"))
    assert server is None and client is None
    server, client = handshake(lambda c: auth.deliver_challenge(c, b"k", digest),
                               lambda c: auth.answer_challenge(c, b"other"))
    assert isinstance(server, polyproc.AuthenticationError)
    assert isinstance(client, polyproc.AuthenticationError)


def test_handshake_default_dialect_matches_interpreter():
    import sys

    a, b = Pipe()
    with a, b:
        join = in_thread(auth.deliver_challenge, a, b"k")
        challenge = b.recv_bytes()
        b.close()
        with pytest.raises(EOFError):  # the peer hung up instead of answering
            join()
    message = challenge[len(b"#CHALLENGE#"):]
    if sys.version_info >= (3, 12):
        assert message.startswith(b"{sha256}") and len(message) == 8 + 40
    else:
        assert len(message) == 20


def test_handshake_rejects_non_challenge():
    def garbage_server(conn):
        conn.send_bytes(b"hello, not a challenge")

    _, client = handshake(garbage_server, lambda c: auth.answer_challenge(c, b"k"))
    assert isinstance(client, polyproc.AuthenticationError)


@pytest.mark.parametrize("challenge", [b"#CHALLENGE#short", b"#CHALLENGE#{nope}" + b"x" * 40,
                                       b"#CHALLENGE#" + b"y" * 33])
def test_handshake_rejects_malformed_challenge(challenge):
    _, client = handshake(lambda c: c.send_bytes(challenge),
                          lambda c: auth.answer_challenge(c, b"k"))
    assert isinstance(client, polyproc.AuthenticationError)


def test_handshake_rejects_oversized_messages_without_reading_them():
    def huge_header(conn):
        os.write(conn.fileno(), struct.pack("!i", 0x7FFFFFF0))  # claims ~2 GiB, sends nothing

    _, client = handshake(huge_header, lambda c: auth.answer_challenge(c, b"k"))
    assert isinstance(client, polyproc.AuthenticationError)

    def huge_response(conn):
        conn.recv_bytes()
        conn.send_bytes(b"r" * 1000)

    server, _ = handshake(lambda c: auth.deliver_challenge(c, b"k"), huge_response)
    assert isinstance(server, polyproc.AuthenticationError)


def test_handshake_rejects_garbage_response():
    def bad_client(conn):
        conn.recv_bytes()
        conn.send_bytes(b"{sha256}" + b"0" * 32)
        assert conn.recv_bytes() == b"#FAILURE#"

    server, client = handshake(lambda c: auth.deliver_challenge(c, b"k", "sha256"), bad_client)
    assert isinstance(server, polyproc.AuthenticationError)
    assert client is None


def test_handshake_authkey_must_be_bytes():
    a, b = Pipe()
    with a, b:
        with pytest.raises(ValueError, match="Authkey must be bytes"):
            auth.deliver_challenge(a, "text")
        with pytest.raises(ValueError, match="Authkey must be bytes"):
            auth.answer_challenge(a, bytearray(b"x"))
        with pytest.raises(ValueError, match="unsupported digest"):
            auth.deliver_challenge(a, b"k", "crc32")
        assert not b.poll()
