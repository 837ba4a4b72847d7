"""polyproc.dummy: the thread-backed API, compared with multiprocessing.dummy."""

from __future__ import annotations

import multiprocessing.dummy as std_dummy
import multiprocessing.dummy.connection as std_dummy_connection
import queue
import sys
import threading
import time

import pytest

import polyproc.dummy as dummy
import polyproc.dummy.connection as dummy_connection

T = 30.0


def program(m):
    """A small program using most of the dummy API; returns what it observed."""
    out = []
    lock, results = m.Lock(), []

    def work(x):
        with lock:
            results.append((x, m.current_process().name))

    ps = [m.Process(target=work, args=(i,), name=f"w{i}") for i in range(3)]
    out.append([p.exitcode for p in ps])
    for p in ps:
        p.start()
    for p in ps:
        p.join(T)
    out.append(sorted(results))
    out.append([(p.exitcode, p.is_alive(), p.name) for p in ps])
    out.append(m.active_children())
    out.append(m.current_process() is threading.main_thread())

    ev, started = m.Event(), m.Event()
    blocker = m.Process(target=lambda: (started.set(), ev.wait(T)))
    blocker.start()
    started.wait(T)
    out.append((m.active_children() == [blocker], blocker.exitcode))
    ev.set()
    blocker.join(T)
    out.append((m.active_children(), blocker.exitcode))

    out.append([type(f()).__name__ for f in (m.Lock, m.RLock, m.Semaphore, m.BoundedSemaphore,
                                              m.Condition, m.Event)])
    b = m.Barrier(1)
    out.append((type(b).__name__, b.wait()))

    q = m.Queue()
    q.put(1)
    jq = m.JoinableQueue()
    jq.put(2)
    jq.get()
    jq.task_done()
    jq.join()
    out.append((q.get(), type(q).__name__, type(jq).__name__))

    mgr = m.Manager()
    d, lst = mgr.dict(a=1), mgr.list([1, 2])
    ns = mgr.Namespace(x=1, _hidden=2, a="s")
    val, arr = mgr.Value("i", 5), mgr.Array("i", [1, 2, 3])
    val.value += 1
    arr[0] = 9
    out.append((d, lst, repr(ns), ns.x, repr(val), val.value, arr.tolist(), repr(arr)))
    mgr.shutdown()

    a, b2 = m.Pipe()
    a.send({"k": [1]})
    out.append((b2.poll(), b2.recv(), b2.poll()))
    b2.send_bytes(b"xyz")
    out.append(a.recv_bytes())
    with a, b2:
        pass
    m.freeze_support()
    return out


def test_program_same_as_stdlib_dummy():
    assert program(dummy) == program(std_dummy)


def test_all_matches_stdlib():
    assert sorted(dummy.__all__) == sorted(std_dummy.__all__)
    for name in dummy.__all__:
        assert hasattr(dummy, name), name
    assert dummy.Lock is threading.Lock and dummy.Barrier is threading.Barrier
    assert dummy.Queue is queue.Queue and dummy.JoinableQueue is queue.Queue
    assert dummy.current_process is threading.current_thread
    assert dummy.Manager() is dummy


def test_process_is_thread_with_exitcode():
    done = threading.Event()
    p = dummy.Process(target=done.wait, args=(T,), daemon=True)
    assert isinstance(p, threading.Thread) and p.daemon
    assert p.exitcode is None
    p.start()
    assert p.exitcode is None and p.is_alive()
    done.set()
    p.join(T)
    assert p.exitcode == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_target_exception_still_exits_zero():
    def boom():
        raise ValueError("x")

    p = dummy.Process(target=boom)
    p.start()
    p.join(T)
    assert p.exitcode == 0  # as the stdlib: threads have no exit code


def test_start_from_other_thread_raises_like_stdlib():
    def attempt(m):
        p = m.Process(target=lambda: None)
        box = {}

        def other():
            try:
                p.start()
            except RuntimeError as e:
                box["err"] = str(e).split(" but ")[0].startswith("Parent is ")
        t = threading.Thread(target=other)
        t.start()
        t.join(T)
        return box

    assert attempt(dummy) == attempt(std_dummy) == {"err": True}


def test_active_children_in_plain_thread():
    box = {}

    def run():
        child = dummy.Process(target=lambda: None)
        child.start()
        child.join(T)
        box["children"] = dummy.active_children()

    t = threading.Thread(target=run)
    t.start()
    t.join(T)
    assert box == {"children": []}


def test_pipe_poll_timeouts_and_bytes():
    a, b = dummy.Pipe(duplex=False)
    assert b.poll() is False
    t0 = time.monotonic()
    assert b.poll(0.05) is False
    assert time.monotonic() - t0 >= 0.04
    threading.Timer(0.01, a.send, args=("late",)).start()
    assert b.poll(None) is True  # waits for the message
    assert b.recv() == "late"
    a.send_bytes(bytearray(b"0123456789"), 2, 3)
    assert b.recv_bytes() == b"234"
    a.send_bytes(b"toolong")
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(3)
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", 5)
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", 1, 5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mod", [dummy, std_dummy], ids=["polyproc", "stdlib"])
def test_bytes_methods_take_any_object_like_the_stdlib(mod):
    # The stdlib's thread connections send anything through send_bytes/recv_bytes (they are
    # send/recv): an echo thread built on them must not die on a list or None.
    conn, child = mod.Pipe()
    sentinel = "STOP"

    def echo():
        for msg in iter(child.recv_bytes, sentinel):
            child.send_bytes(msg)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    for msg in ([1, 2.25, None], None, b"hello", {"a": 1}):
        conn.send(msg)
        assert conn.recv() == msg
        conn.send_bytes(msg)
        assert conn.recv_bytes() == msg
    conn.send_bytes(sentinel)
    t.join(T)
    assert not t.is_alive()
    conn.send([1, 2, 3])
    assert child.recv_bytes(1) == [1, 2, 3]  # maxlength limits bytes-like messages only


def test_listener_and_client():
    def serve(listener, result):
        with listener.accept() as conn:
            result.append(conn.recv())
            conn.send("pong")

    for mod in (dummy_connection, std_dummy_connection):
        result = []
        with mod.Listener() as listener:
            t = threading.Thread(target=serve, args=(listener, result))
            t.start()
            conn = mod.Client(listener.address)
            conn.send("ping")
            assert conn.recv() == "pong"
            t.join(T)
        assert result == ["ping"]
        assert listener.address is None
    assert dummy_connection.families == std_dummy_connection.families


def test_pool_is_thread_pool():
    try:
        from polyproc.pool import ThreadPool
    except ImportError:
        pytest.skip("polyproc.pool is not available yet")
    with dummy.Pool(2) as pool:
        assert isinstance(pool, ThreadPool)
        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]


def test_pool_without_pool_module_raises_clearly(monkeypatch):
    monkeypatch.setitem(sys.modules, "polyproc.pool", None)
    with pytest.raises(NotImplementedError, match="pool milestone"):
        dummy.Pool(2)
