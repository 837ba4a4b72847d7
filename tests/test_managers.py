"""Managers: SyncManager types, proxies (nested, in children, between clients), lifecycle,
failure behaviour, security defaults, TLS, SharedMemoryManager, and a load test."""

from __future__ import annotations

import array
import gc
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import polyproc
from _scripts import run_script
from polyproc._wire import security
from polyproc.managers import (
    BaseManager,
    BaseProxy,
    ManagerConnectionError,
    RemoteError,
    SharedMemoryManager,
    SyncManager,
)

pytestmark = pytest.mark.timeout(60)

METHODS = ["fork", "spawn", "forkserver"]


@pytest.fixture(scope="module")
def manager():
    """One SyncManager shared by the tests that only use it (starting one costs ~20 ms)."""
    m = SyncManager(ctx=polyproc.get_context("fork"))
    m.start()
    yield m
    m.shutdown()


def _gone(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` has exited (or is a zombie) within ``timeout`` seconds."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


# ==================================================================== SyncManager types


def test_dict(manager):
    d = manager.dict({"a": 1}, b=2)
    d["c"] = 3
    assert d["a"] == 1 and d["b"] == 2 and len(d) == 3
    assert "c" in d and "z" not in d
    assert sorted(d.keys()) == ["a", "b", "c"]
    assert sorted(d.values()) == [1, 2, 3]
    assert sorted(d.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert sorted(d) == ["a", "b", "c"]  # __iter__ returns an IteratorProxy
    assert d.get("zz", 5) == 5 and d.setdefault("e", 9) == 9
    d.update({"f": 6})
    assert d.pop("f") == 6
    del d["e"]
    assert d.copy() == {"a": 1, "b": 2, "c": 3} == d._getvalue()
    with pytest.raises(KeyError):
        d["missing"]
    d.clear()
    assert len(d) == 0
    assert str(d) == "{}" and "DictProxy" in repr(d)
    again = pickle.loads(pickle.dumps(d))  # by reference: the type is importable
    assert type(again) is polyproc.managers.DictProxy and again._getvalue() == {}


def test_list(manager):
    lst = manager.list([3, 1, 2])
    lst.append(4)
    lst.extend([5])
    lst.insert(0, 0)
    assert lst[:] == [0, 3, 1, 2, 4, 5] and lst[1] == 3 and len(lst) == 6
    lst.sort()
    assert list(lst) == [0, 1, 2, 3, 4, 5]
    lst.reverse()
    assert lst.pop() == 0 and lst.index(5) == 0 and lst.count(1) == 1
    lst.remove(5)
    lst[0] = 40
    del lst[0]
    assert lst[:] == [3, 2, 1]
    lst += [7]
    assert lst[:] == [3, 2, 1, 7]
    lst *= 2
    assert len(lst) == 8
    assert lst + [1] == [3, 2, 1, 7, 3, 2, 1, 7, 1]
    assert 7 in lst and list(reversed(lst))[0] == 7


def test_namespace_value_array(manager):
    ns = manager.Namespace(x=1)
    ns.y = "two"
    assert (ns.x, ns.y) == (1, "two")
    del ns.x
    with pytest.raises(AttributeError):
        _ = ns.x
    assert "y='two'" in str(ns)
    v = manager.Value("i", 7)
    v.value += 1
    assert v.value == 8 and v.get() == 8
    v.set(3)
    assert v.value == 3
    a = manager.Array("d", [1.0, 2.0])
    a[0] = 5.0
    assert len(a) == 2 and a[0] == 5.0 and a[:] == array.array("d", [5.0, 2.0])


def test_queues(manager):
    q = manager.Queue()
    q.put(1)
    q.put_nowait({"a": [1, 2]})
    assert q.qsize() == 2 and not q.empty()
    assert q.get() == 1 and q.get_nowait() == {"a": [1, 2]}
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    jq = manager.JoinableQueue()
    jq.put("x")
    assert jq.get() == "x"
    jq.task_done()
    jq.join()
    bounded = manager.Queue(1)
    bounded.put(1)
    with pytest.raises(queue.Full):
        bounded.put(2, timeout=0.01)


def test_synchronization_primitives(manager):
    lock = manager.Lock()
    assert lock.acquire() is True
    assert lock.acquire(timeout=0.01) is False
    lock.release()
    with lock:
        pass
    rlock = manager.RLock()
    with rlock, rlock:
        pass
    sem = manager.Semaphore(2)
    assert sem.acquire() and sem.acquire() and not sem.acquire(False)
    sem.release()
    bsem = manager.BoundedSemaphore(1)
    with pytest.raises(ValueError):
        bsem.release()
    ev = manager.Event()
    assert not ev.is_set() and ev.wait(0.01) is False
    ev.set()
    assert ev.is_set() and ev.wait() is True
    ev.clear()
    cond = manager.Condition()
    with cond:
        assert cond.wait(0.01) is False
        assert cond.wait_for(lambda: True) is True
        cond.notify()
        cond.notify_all()
    barrier = manager.Barrier(2, timeout=5)
    assert barrier.parties == 2 and barrier.n_waiting == 0 and not barrier.broken
    results = []
    t = threading.Thread(target=lambda: results.append(barrier.wait()))
    t.start()
    results.append(barrier.wait())
    t.join(10)
    assert sorted(results) == [0, 1]


def test_condition_between_threads(manager):
    cond = manager.Condition()
    state = manager.dict(ready=False)

    def waiter(out):
        with cond:
            out.append(cond.wait_for(lambda: state["ready"], timeout=10))

    out: list = []
    t = threading.Thread(target=waiter, args=(out,))
    t.start()
    time.sleep(0.05)
    with cond:
        state["ready"] = True
        cond.notify_all()
    t.join(10)
    assert out == [True]


def _square(x):
    return x * x


def test_pool_proxy(manager):
    with manager.Pool(2) as pool:
        assert pool.map(_square, range(5)) == [0, 1, 4, 9, 16]
        assert pool.apply(_square, (3,)) == 9
        res = pool.apply_async(_square, (4,))
        assert res.get(timeout=30) == 16
        assert sorted(pool.imap_unordered(_square, range(4))) == [0, 1, 4, 9]
        assert list(pool.imap(_square, range(3))) == [0, 1, 4]


def test_errors_from_the_server(manager):
    d = manager.dict()
    with pytest.raises(RemoteError, match="not in exposed"):
        d._callmethod("no_such_method")
    with pytest.raises(TypeError):
        d.get()  # the referent's own exception, re-raised here
    assert isinstance(RemoteError("x"), Exception) and "x" in str(RemoteError("x"))
    with pytest.raises(RemoteError, match="Unserializable"):
        manager.Queue()._getvalue()  # a queue.Queue holds locks: the reply can't be pickled


def test_many_threads_share_a_proxy(manager):
    d = manager.dict()

    def work(i):
        for j in range(50):
            d[(i, j)] = j

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(d) == 400


# ==================================================================== nested proxies


def test_nested_proxies(manager):
    d = manager.dict()
    d["x"] = manager.list()  # the temporary list proxy is dropped at once
    gc.collect()
    d["x"].append(1)
    d["x"].append(2)
    assert d["x"][:] == [1, 2]
    outer = manager.list([manager.dict(a=1), manager.dict(b=2)])
    gc.collect()
    outer[0]["c"] = 3
    assert outer[0].copy() == {"a": 1, "c": 3} and outer[1]["b"] == 2
    ns = manager.Namespace()
    ns.q = manager.Queue()
    ns.q.put("hello")
    assert ns.q.get() == "hello"


def test_nested_objects_are_released(manager):
    gc.collect()
    base = manager._number_of_objects()
    d = manager.dict()
    d["x"] = manager.list([1])
    d["y"] = manager.dict()
    gc.collect()
    assert manager._number_of_objects() == base + 3
    del d["x"]
    assert manager._number_of_objects() == base + 2
    del d
    gc.collect()
    assert manager._number_of_objects() == base


def test_released_objects(manager):
    gc.collect()
    base = manager._number_of_objects()
    proxies = [manager.list([i]) for i in range(20)]
    assert manager._number_of_objects() == base + 20
    copies = [pickle.loads(pickle.dumps(p)) for p in proxies]  # each takes a reference
    del proxies
    gc.collect()
    assert manager._number_of_objects() == base + 20
    assert copies[3][:] == [3]
    del copies
    gc.collect()
    assert manager._number_of_objects() == base


# ==================================================================== children


def _child_uses(d, lst, q, nested):
    d["pid"] = os.getpid()
    lst.append("child")
    nested.append(os.getpid())
    q.put(("done", d["pid"]))


def _child_uses_temp(lst):
    time.sleep(0.1)
    lst.append(1)
    assert lst[:] == [1]


@pytest.mark.parametrize("method", METHODS)
def test_proxies_in_children(method):
    ctx = polyproc.get_context(method)
    with ctx.Manager() as m:
        d, lst, q = m.dict(), m.list(), m.Queue()
        d["nested"] = m.list()
        p = ctx.Process(target=_child_uses, args=(d, lst, q, d["nested"]))
        p.start()
        assert q.get(timeout=30) == ("done", p.pid)
        p.join(30)
        assert p.exitcode == 0
        assert d["pid"] == p.pid and lst[:] == ["child"] and d["nested"][:] == [p.pid]
        base = m._number_of_objects()
        # A proxy the parent drops right after start(): the child still owns a reference.
        p = ctx.Process(target=_child_uses_temp, args=(m.list(),))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        deadline = time.monotonic() + 5
        while m._number_of_objects() != base and time.monotonic() < deadline:
            time.sleep(0.02)  # the child gives its reference back as it exits
        assert m._number_of_objects() == base


def _pool_task(args):
    d, i = args
    d[i] = i * i
    return i


def test_proxies_through_a_pool(manager):
    d = manager.dict()
    with polyproc.get_context("spawn").Pool(2) as pool:
        assert sorted(pool.map(_pool_task, [(d, i) for i in range(6)])) == list(range(6))
    assert d.copy() == {i: i * i for i in range(6)}


def _other_client(address, authkey, q, out):
    m = SyncManager(address=address, authkey=authkey)
    m.connect()
    lst = q.get(timeout=30)  # a proxy put into the queue by another client
    lst.append("from other client")
    out.put(lst[:])


def test_proxy_passed_to_another_client():
    authkey = b"another-client-key"
    ctx = polyproc.get_context("spawn")
    with SyncManager(authkey=authkey, ctx=ctx) as m:
        q, out = m.Queue(), m.Queue()
        lst = m.list(["start"])
        p = ctx.Process(target=_other_client, args=(m.address, authkey, q, out))
        p.start()
        q.put(lst)
        assert out.get(timeout=30) == ["start", "from other client"]
        p.join(30)
        assert p.exitcode == 0
        assert lst[:] == ["start", "from other client"]


# ==================================================================== lifecycle


def test_start_shutdown_leaves_nothing(no_leaks):
    m = SyncManager()
    m.start()
    pid = m._process.pid
    assert m.list([1])[:] == [1]
    m.shutdown()
    assert _gone(pid, 5)
    with pytest.raises(polyproc.ProcessError):
        m.start()


def test_context_manager_and_state():
    with polyproc.Manager() as m:
        assert isinstance(m, SyncManager) and m.address
        with pytest.raises(polyproc.ProcessError):
            m.start()
    with pytest.raises(polyproc.ProcessError):
        m.__enter__()


def test_manager_collected_shuts_down():
    m = SyncManager()
    m.start()
    pid = m._process.pid
    del m
    gc.collect()
    assert _gone(pid, 5)


def _init(path):
    Path(path).write_text("ran")


def test_initializer(tmp_path):
    marker = tmp_path / "init"
    m = SyncManager()
    with pytest.raises(TypeError):
        m.start(initializer=5)
    m.start(_init, (str(marker),))
    try:
        assert marker.read_text() == "ran"
    finally:
        m.shutdown()


def test_start_failure_is_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        m = SyncManager(address=s.getsockname())
        t0 = time.monotonic()
        with pytest.raises(OSError):
            m.start()
        assert time.monotonic() - t0 < 10


def test_unsupported_serializer():
    with pytest.raises(ValueError, match="serializer"):
        SyncManager(serializer="marshal")  # 'pickle' and 'xmlrpclib' are the supported ones


def test_server_exits_when_its_parent_dies(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", (
            "import polyproc, sys, time\n"
            "m = polyproc.Manager()\n"
            "print(m._process.pid, flush=True)\n"
            "time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
    )
    try:
        server_pid = int(proc.stdout.readline())
        proc.kill()
        proc.wait(10)
        assert _gone(server_pid, 10), "manager process outlived its parent"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_manager_not_left_running_at_exit(tmp_path):
    res = run_script(tmp_path, """
        import polyproc
        if __name__ == '__main__':
            m = polyproc.Manager()
            d = m.dict(a=1)
            print(m._process.pid)
            # no shutdown: the exit handler must stop the manager
    """, timeout=60)
    assert res.returncode == 0, res.stderr
    assert _gone(int(res.stdout.split()[0]), 5)


# ==================================================================== failures


def test_dead_manager_fails_promptly():
    import psutil

    m = SyncManager()
    m.start()
    try:
        d, q = m.dict(a=1), m.Queue()
        pool = m.Pool(1)  # its worker is forked from the manager: must not hold our sockets
        assert pool.apply(abs, (-3,)) == 3
        workers = psutil.Process(m._process.pid).children(recursive=True)
        errors: list = []

        def blocked():
            try:
                q.get(timeout=60)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.1)
        m._process.kill()
        m._process.join(10)
        t0 = time.monotonic()
        with pytest.raises(ManagerConnectionError) as info:
            d["a"]
        assert time.monotonic() - t0 < 2
        assert isinstance(info.value, EOFError) and isinstance(info.value, ConnectionError)
        assert str(m.address) in str(info.value)
        with pytest.raises(ManagerConnectionError, match="cannot connect"):
            m.list()
        t.join(10)
        assert not t.is_alive() and isinstance(errors[0], ManagerConnectionError)
        assert all(_gone(w.pid, 10) for w in workers)
    finally:
        m.shutdown()


class _Interrupt(Exception):
    pass


def test_interrupted_call_does_not_desync(manager):
    q, d = manager.Queue(), manager.dict(k="v")

    def handler(signum, frame):
        raise _Interrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(_Interrupt):
            q.get(timeout=5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert d["k"] == "v"  # a fresh connection; the old one was discarded


def test_wrong_authkey():
    with SyncManager(authkey=b"right") as m:
        other = SyncManager(address=m.address, authkey=b"wrong")
        with pytest.raises(polyproc.AuthenticationError, match="authentication"):
            other.connect()


# ==================================================================== register / BaseManager


class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def children(self):
        return [Counter(1), Counter(2)]

    def child(self):
        return Counter(10)

    def _private(self):
        return "hidden"


class CounterManager(BaseManager):
    pass


CounterManager.register("Counter", Counter)
CounterManager.register("Limited", Counter, exposed=("get",))
CounterManager.register("Spawner", Counter, method_to_typeid={"child": "CounterRef"})
CounterManager.register("CounterRef", create_method=False)  # wraps an existing object
CounterManager.register("NoCreate", Counter, create_method=False)


def test_register_and_auto_proxy():
    with CounterManager() as m:
        c = m.Counter(5)
        assert c.incr() == 6 and c.incr(k=4) == 10 and c.get() == 10
        assert not hasattr(c, "_private")
        with pytest.raises(RemoteError):
            c._callmethod("_private")
        lim = m.Limited()
        assert lim.get() == 0 and not hasattr(lim, "incr")
        sp = m.Spawner()
        child = sp.child()  # method_to_typeid: returned as a proxy
        assert isinstance(child, BaseProxy) and child.incr() == 11
        assert not hasattr(m, "NoCreate")
        again = pickle.loads(pickle.dumps(c))
        assert again.get() == 10


def test_get_server_and_connect_in_process():
    server_mgr = CounterManager(address=("127.0.0.1", 0), authkey=b"k")
    server = server_mgr.get_server()
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        client = CounterManager(address=server.address, authkey=b"k")
        client.connect()
        c = client.Counter(1)
        assert c.incr() == 2
        assert client._number_of_objects() == 1
    finally:
        server.stop()
        t.join(10)
    assert not t.is_alive()


def test_max_message_size():
    with SyncManager(max_message_size=10_000) as m:
        lst = m.list()
        lst.append(b"x" * 1000)
        with pytest.raises(ValueError, match="max_message_size"):
            lst.append(b"x" * 20_000)
        assert lst[:] == [b"x" * 1000]  # the connection is still fine


# ==================================================================== security


def test_check_bind_address():
    for ok in [None, "/tmp/x", b"\0abstract", ("127.0.0.1", 0), ("localhost", 0), ("::1", 0),
               ("127.3.4.5", 80)]:
        assert security.is_loopback_address(ok)
        security.check_bind_address(ok, None)
    for bad in [("", 0), ("0.0.0.0", 0), ("::", 0), ("192.0.2.1", 0), ("10.1.2.3", 0)]:
        assert not security.is_loopback_address(bad)
        with pytest.raises(ValueError, match="allow_unauthenticated=True"):
            security.check_bind_address(bad, b"")
        security.check_bind_address(bad, b"key")
        security.check_bind_address(bad, None, allow_unauthenticated=True)


def test_manager_refuses_public_address_without_authkey():
    m = SyncManager(address=("0.0.0.0", 0), authkey=b"")
    with pytest.raises(ValueError, match="authkey"):
        m.start()
    with pytest.raises(ValueError, match="allow_unauthenticated"):
        m.get_server()
    server = SyncManager(address=("0.0.0.0", 0), authkey=b"",
                         allow_unauthenticated=True).get_server()
    server.close()
    SyncManager(address=("127.0.0.1", 0), authkey=b"").get_server().close()


# ==================================================================== TLS


def _make_cert(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost / 127.0.0.1 (cryptography, else openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        import shutil

        if not shutil.which("openssl"):
            pytest.skip("needs the cryptography package or the openssl CLI to make a certificate")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
             "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30)
        return str(cert), str(key)
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(pkey.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(cert), str(key)


def test_tls(tmp_path, caplog):
    import ssl

    certfile, keyfile = _make_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile, keyfile)
    client_ctx = ssl.create_default_context(cafile=certfile)
    key = b"tls-key"
    ctx = polyproc.get_context("fork")
    m = SyncManager(address=("127.0.0.1", 0), authkey=key, ctx=ctx,
                    ssl_context=(server_ctx, client_ctx), handshake_timeout=1)
    m.start()
    try:
        d = m.dict()
        d["secret"] = "over TLS"
        assert d["secret"] == "over TLS"
        other = SyncManager(address=m.address, authkey=key, ssl_context=client_ctx)
        other.connect()
        assert other.list([1, 2])[:] == [1, 2]
        plain = SyncManager(address=m.address, authkey=key, connect_timeout=5)
        with pytest.raises((ManagerConnectionError, polyproc.AuthenticationError)):
            plain.connect()  # no TLS: the server drops it
        untrusting = SyncManager(address=m.address, authkey=key,
                                 ssl_context=ssl.create_default_context())
        with pytest.raises((ManagerConnectionError, ssl.SSLError)):
            untrusting.connect()  # the self-signed certificate is not trusted
        assert d["secret"] == "over TLS"
    finally:
        m.shutdown()
    with pytest.raises(ValueError, match="picklable"):
        SyncManager(ssl_context=(server_ctx, client_ctx),
                    ctx=polyproc.get_context("spawn")).start()


def _tls_contexts(certfile, keyfile):
    """A picklable factory of the (server, client) TLS contexts."""
    import ssl

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile, keyfile)
    return server_ctx, ssl.create_default_context(cafile=certfile)


def _tls_child(d):
    d["child"] = "wrote over TLS"


def test_tls_factory_with_spawn(tmp_path):
    import functools

    certfile, keyfile = _make_cert(tmp_path)
    ctx = polyproc.get_context("spawn")
    factory = functools.partial(_tls_contexts, certfile, keyfile)
    with SyncManager(address=("127.0.0.1", 0), authkey=b"k", ctx=ctx, ssl_context=factory) as m:
        d = m.dict()
        p = ctx.Process(target=_tls_child, args=(d,))  # the factory travels with the proxy
        p.start()
        p.join(30)
        assert p.exitcode == 0 and d["child"] == "wrote over TLS"


def test_tls_rejects_wrong_context_type():
    import ssl

    client_only = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(ValueError, match="server"):
        SyncManager(address=("127.0.0.1", 0), ssl_context=client_only).get_server()
    with pytest.raises(TypeError):
        security.split_ssl_context("not a context")


# ==================================================================== shared memory


def _shm_exists(name: str) -> bool:
    return os.path.exists("/dev/shm/" + name.lstrip("/"))


def test_shared_memory_manager():
    with SharedMemoryManager() as smm:
        sm = smm.SharedMemory(64)
        sm.buf[:3] = b"abc"
        sl = smm.ShareableList([1, "two", 3.0, None])
        assert sl[1] == "two" and bytes(sm.buf[:3]) == b"abc"
        names = [sm.name, sl.shm.name]
        assert all(_shm_exists(n) for n in names)
        listed = smm._endpoint().call(None, "list_segments")
        assert sorted(listed) == sorted(names)
        lock = None
        with pytest.raises(AttributeError):
            lock = smm.Lock()  # not a SyncManager
        assert lock is None
        sm.close()
        sl.shm.close()
    assert not any(_shm_exists(n) for n in names)


# ==================================================================== differential


def _script(mp):
    out = []
    with mp.Manager() as m:
        d = m.dict(a=1)
        lst = m.list(range(3))
        d["b"] = [1, 2]
        lst.extend("xy")
        lst.reverse()
        out.append(sorted(d.items()))
        out.append(lst[:])
        out.append((len(d), len(lst), "a" in d, 2 in lst))
        ns = m.Namespace(v=1)
        ns.v += 1
        out.append(ns.v)
        q = m.Queue()
        for i in range(3):
            q.put(i)
        out.append([q.get() for _ in range(3)])
        v = m.Value("i", 5)
        v.value *= 3
        out.append(v.value)
        try:
            d["nope"]
        except KeyError as e:
            out.append(("KeyError", e.args))
        out.append(str(lst))
    return out


def test_differential_against_stdlib():
    import multiprocessing

    assert _script(polyproc) == _script(multiprocessing.get_context("fork"))


# ==================================================================== load


def _hammer(address, authkey, lock_proxy, d, seconds, nthreads, out):
    m = SyncManager(address=address, authkey=authkey)
    m.connect()
    counts = []

    def worker(i):
        n = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with lock_proxy:
                d["counter"] = d["counter"] + 1
            d[f"w{os.getpid()}-{i}"] = n
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    out.put(sum(counts))


def test_load_32_clients_no_lost_update():
    ctx = polyproc.get_context("fork")
    authkey = b"load-test"
    with SyncManager(authkey=authkey, ctx=ctx) as m:
        d, lock, out = m.dict(counter=0), m.Lock(), m.Queue()
        nprocs, nthreads, seconds = 4, 8, 3.0
        procs = [ctx.Process(target=_hammer,
                             args=(m.address, authkey, lock, d, seconds, nthreads, out))
                 for _ in range(nprocs)]
        for p in procs:
            p.start()
        total = sum(out.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert total > 0
        assert d["counter"] == total
        assert len(d) == 1 + nprocs * nthreads  # every client wrote its own key


# ==================================================================== interoperability


def test_stdlib_client_uses_a_polyproc_manager():
    from multiprocessing.managers import SyncManager as StdSyncManager

    key = b"interop"
    with SyncManager(authkey=key) as m:
        std = StdSyncManager(address=m.address, authkey=key)
        std.connect()
        d = std.dict()
        d["a"] = [1, 2]
        assert d["a"] == [1, 2] and len(d) == 1
        q = std.Queue()
        q.put("x")
        assert q.get() == "x"
        del d, q
        gc.collect()
        assert m._number_of_objects() == 0


def test_polyproc_client_uses_a_stdlib_manager():
    import multiprocessing
    from multiprocessing.managers import SyncManager as StdSyncManager

    key = b"interop"
    std = StdSyncManager(authkey=key, ctx=multiprocessing.get_context("fork"))
    std.start()
    try:
        m = SyncManager(address=std.address, authkey=key)
        m.connect()
        d = m.dict(a=1)
        d["b"] = 2
        assert d.copy() == {"a": 1, "b": 2}
        assert sorted(d) == ["a", "b"]  # a '#PROXY' reply with the stdlib's Token
        lst = m.list([3])
        del d, lst
        gc.collect()
        assert m._number_of_objects() == 0  # decrefs sent as requests, replies read
        assert m.list([5])[:] == [5]  # the connection is still in step
    finally:
        std.shutdown()
