"""Managers and ``connection.Listener`` against slow and lying peers (issue 16, point 4).

* The handshake has a deadline for the whole of it: a peer that sends one byte every 0.3 s
  is dropped at ``handshake_timeout``, not kept forever by per-read timeouts.
* Unfinished handshakes cost no thread: 100 such peers leave the manager's thread count
  flat while normal clients are served, and ``max_handshakes`` caps them.
* Messages are read as they arrive: a length header announcing 2 GiB makes the reader
  allocate what was really sent, not 2 GiB; the manager's default ``max_message_size``
  (1 GiB) drops such a request at once.

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
import time

import psutil
import pytest

import polyproc
from _log_records import Records
from polyproc import connection
from polyproc._managers.channel import Channel, open_channel
from polyproc._wire import auth, framing
from polyproc.managers import DEFAULT_MAX_MESSAGE_SIZE, SyncManager

pytestmark = pytest.mark.timeout(120)

METHODS = ["fork", "spawn", "forkserver"]
KEY = b"hardening-test-key"
#: A well-formed handshake message (under the 256-byte cap), for dripping byte by byte.
DRIP_FRAME = struct.pack("!i", 200) + b"y" * 200
DRIP_INTERVAL = 0.3
HUGE = 0x7FFFFFF0  # a length header announcing almost 2 GiB
MiB = 1 << 20


# ------------------------------------------------------------------ helpers


@pytest.fixture
def local_server():
    """Start a manager server in a thread of this process (its log records are visible);
    yields ``start(**options) -> (server, records)``."""
    logger = logging.getLogger("polyproc.managers")
    handler = Records()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    started = []

    def start(**options):
        srv = SyncManager(address=("127.0.0.1", 0), authkey=KEY, **options).get_server()
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        started.append((srv, thread))
        return srv, handler

    try:
        yield start
    finally:
        for srv, thread in started:
            srv.stop()
            thread.join(10)
            assert not thread.is_alive()
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture(params=METHODS)
def manager_process(request, no_leaks):
    """Start a manager process with the given options under each start method; yields
    ``start(**options) -> (manager, psutil.Process of the server)``."""
    managers = []

    def start(**options):
        m = SyncManager(address=("127.0.0.1", 0), authkey=KEY,
                        ctx=polyproc.get_context(request.param), **options)
        m.start()
        managers.append(m)
        return m, psutil.Process(m._process.pid)

    try:
        yield start
    finally:
        for m in managers:
            m.shutdown()


def _good_client_works(address, timeout: float = 10.0) -> float:
    """Connect a new client, use a shared dict; return how long it took."""
    t0 = time.monotonic()
    m = SyncManager(address=address, authkey=KEY, connect_timeout=timeout)
    m.connect()
    d = m.dict()
    d["k"] = "v"
    assert d["k"] == "v" and len(d) == 1
    m._endpoint().close()
    return time.monotonic() - t0


def _closed_by_peer(sock: socket.socket) -> bool:
    """Read what is waiting (never blocks); True if the peer has closed the connection."""
    try:
        while select.select([sock], [], [], 0)[0]:
            if not sock.recv(65536):
                return True
    except OSError:
        return True
    return False


def _drip_until_closed(address, limit: float) -> float | None:
    """Connect and send a handshake message one byte every DRIP_INTERVAL seconds until the
    server closes the connection; return how long that took (None: still open at limit)."""
    with socket.create_connection(address, timeout=5) as sock:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < limit:
            try:
                sock.send(DRIP_FRAME[i % len(DRIP_FRAME):][:1])
            except OSError:
                return time.monotonic() - t0
            i += 1
            select.select([sock], [], [], DRIP_INTERVAL)
            if _closed_by_peer(sock):
                return time.monotonic() - t0
        return None


def _authenticated(address) -> Channel:
    """A raw channel that has passed the handshake (a peer that knows the key)."""
    sock = socket.create_connection(address, timeout=5)
    chan = Channel(sock)
    auth.answer_challenge(chan, KEY)
    auth.deliver_challenge(chan, KEY)
    return chan


def _wait_closed(chan: Channel, timeout: float) -> bool:
    chan.settimeout(timeout)
    try:
        chan.recv_bytes()
    except (EOFError, OSError):
        return True
    return False


def _settled_rss(proc: psutil.Process, settle: float = 0.3, limit: float = 5.0) -> int:
    """The process's RSS once it stopped growing for ``settle`` seconds (at most ``limit``)."""
    deadline = time.monotonic() + limit
    rss = proc.memory_info().rss
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = proc.memory_info().rss
        if now <= rss:
            return max(now, rss)
        rss = now
    return rss


# ------------------------------------------------------------------ handshake deadline


def test_drip_peer_dropped_at_deadline_and_logged(local_server):
    srv, records = local_server(handshake_timeout=1.0)
    with socket.create_connection(srv.address, timeout=5) as sock:
        host, port = sock.getsockname()[:2]
        name = f"{host}:{port}"
        t0 = time.monotonic()
        i = 0
        while not _closed_by_peer(sock) and time.monotonic() - t0 < 10:
            try:
                sock.send(DRIP_FRAME[i:i + 1])
            except OSError:
                break
            i += 1
            select.select([sock], [], [], DRIP_INTERVAL)
        elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 2.5, f"the drip peer was dropped after {elapsed:.2f} s"
    messages = records.wait_for("timed out")
    assert any(name in m and "before authentication" in m for m in messages), messages
    _good_client_works(srv.address)


@pytest.mark.timeout(180)
def test_drip_peer_dropped_at_deadline(manager_process):
    m, _proc = manager_process(handshake_timeout=1.0)
    elapsed = _drip_until_closed(m.address, limit=10)
    assert elapsed is not None, "a peer dripping one byte every 0.3 s was never dropped"
    assert 0.9 < elapsed < 2.5, f"the drip peer was dropped after {elapsed:.2f} s"
    assert m.list([1, 2])[:] == [1, 2]


@pytest.mark.timeout(180)
def test_many_drip_peers_hold_no_threads(manager_process):
    timeout = 2.0
    m, proc = manager_process(handshake_timeout=timeout)
    d = m.dict()  # this thread's connection: one serving thread
    d["n"] = 0
    baseline = proc.num_threads()
    socks = [socket.create_connection(m.address, timeout=5) for _ in range(100)]
    opened = time.monotonic()
    closed: dict[int, float] = {}
    most_threads = baseline
    slowest_call = 0.0
    try:
        i = 0
        new_client_time = None
        while len(closed) < len(socks) and time.monotonic() - opened < timeout + 8:
            for k, s in enumerate(socks):
                if k in closed:
                    continue
                try:
                    s.send(DRIP_FRAME[i:i + 1])
                except OSError:
                    closed[k] = time.monotonic() - opened
                    continue
                if _closed_by_peer(s):
                    closed[k] = time.monotonic() - opened
            i += 1
            t0 = time.monotonic()
            d["n"] = i  # an existing client is served meanwhile
            assert d["n"] == i
            slowest_call = max(slowest_call, time.monotonic() - t0)
            if new_client_time is None and time.monotonic() - opened > timeout / 2:
                new_client_time = _good_client_works(m.address)  # and a new one too
            most_threads = max(most_threads, proc.num_threads())
            time.sleep(DRIP_INTERVAL)
    finally:
        for s in socks:
            s.close()
    assert most_threads <= baseline + 3, (
        f"{most_threads} server threads with 100 slow peers (baseline {baseline})")
    assert len(closed) == len(socks), f"only {len(closed)} of 100 drip peers were dropped"
    assert max(closed.values()) < timeout + 3
    assert slowest_call < 2.0 and new_client_time is not None and new_client_time < 5.0
    assert d["n"] == i


def test_max_handshakes_drops_the_oldest(local_server):
    srv, records = local_server(handshake_timeout=30.0, max_handshakes=5)
    socks = []
    try:
        for _ in range(10):
            socks.append(socket.create_connection(srv.address, timeout=5))
            time.sleep(0.02)  # keep their order of arrival
        # A normal client arrives while 5 handshakes are pending: it gets in, pushing out
        # the oldest silent peer.
        _good_client_works(srv.address)
        deadline = time.monotonic() + 10
        while not all(_closed_by_peer(s) for s in socks[:5]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_closed_by_peer(s) for s in socks[:5])
        assert "max_handshakes=5" in records.wait_for("too many unfinished handshakes")[0]
    finally:
        for s in socks:
            s.close()


def test_tls_manager_drops_a_drip_peer_and_serves_tls_clients(local_server, tmp_path):
    import ssl

    from test_managers import _make_cert

    certfile, keyfile = _make_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certfile, keyfile)
    client_ctx = ssl.create_default_context(cafile=certfile)
    srv, records = local_server(handshake_timeout=1.0, ssl_context=server_ctx)
    result: list[float | None] = []
    dripper = threading.Thread(
        target=lambda: result.append(_drip_until_closed(srv.address, limit=10)), daemon=True)
    dripper.start()
    client = SyncManager(address=srv.address, authkey=KEY, ssl_context=client_ctx,
                         connect_timeout=5)
    client.connect()  # a TLS client gets in while the drip peer is pending
    lst = client.list([1])
    lst.append(2)
    assert lst[:] == [1, 2]
    dripper.join(10)
    assert result and result[0] is not None and 0.9 < result[0] < 2.5, result
    assert records.wait_for("timed out")
    assert lst[:] == [1, 2]
    client._endpoint().close()


def test_client_handshake_has_a_deadline_too():
    """``open_channel`` (a manager client) gives up on a server that trickles its
    challenge, at the deadline."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        done = threading.Event()

        def drip_server():
            conn, _ = lst.accept()
            with conn:
                frame = struct.pack("!i", 60) + auth.CHALLENGE + b"z" * 49
                for i in range(len(frame)):
                    if done.wait(DRIP_INTERVAL):
                        return
                    try:
                        conn.send(frame[i:i + 1])
                    except OSError:
                        return

        thread = threading.Thread(target=drip_server, daemon=True)
        thread.start()
        t0 = time.monotonic()
        with pytest.raises(auth.HandshakeTimeout, match="timed out"):
            open_channel(lst.getsockname(), KEY, timeout=1.0)
        elapsed = time.monotonic() - t0
        done.set()
        thread.join(5)
    assert elapsed < 2.5


# ------------------------------------------------------------------ message sizes


def test_default_max_message_size():
    assert DEFAULT_MAX_MESSAGE_SIZE == 1 << 30
    server = SyncManager(address=("127.0.0.1", 0), authkey=KEY).get_server()
    try:
        assert server.max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    finally:
        server.close()
    unlimited = SyncManager(address=("127.0.0.1", 0), authkey=KEY,
                            max_message_size=None).get_server()
    try:
        assert unlimited.max_message_size is None
    finally:
        unlimited.close()


@pytest.mark.timeout(180)
def test_huge_length_header_is_refused_at_once(manager_process):
    m, proc = manager_process()  # default max_message_size: 1 GiB
    d = m.dict()
    d["x"] = 1
    before = _settled_rss(proc)
    chan = _authenticated(m.address)
    try:
        chan.sock.sendall(struct.pack("!i", HUGE) + b"p" * 1024)
        assert _wait_closed(chan, 5), "the server kept a connection announcing 2 GiB"
    finally:
        chan.close()
    grown = _settled_rss(proc) - before
    assert grown < 100 * MiB, f"the server grew by {grown >> 20} MiB"
    assert d["x"] == 1  # other clients are still served
    _good_client_works(m.address)


@pytest.mark.timeout(180)
def test_lying_length_header_allocates_only_what_arrives(manager_process):
    m, proc = manager_process(max_message_size=None)  # no limit: only growth protects
    d = m.dict()
    d["x"] = 1
    before = _settled_rss(proc)
    chan = _authenticated(m.address)
    try:
        # sendall returns once all but the socket buffers (a few MiB) has been read.
        chan.sock.sendall(struct.pack("!i", HUGE) + b"p" * (16 * MiB))
        grown = _settled_rss(proc) - before
        assert grown < 100 * MiB, f"the server grew by {grown >> 20} MiB for 16 MiB sent"
        assert d["x"] == 1  # served while that message is pending
    finally:
        chan.close()
    _good_client_works(m.address)
    assert d["x"] == 1


@pytest.mark.parametrize("size", [framing.PREALLOCATE_LIMIT - 1, framing.PREALLOCATE_LIMIT + 1,
                                  3 * MiB + 5, 9 * MiB])
def test_large_values_through_a_manager(size):
    with SyncManager(ctx=polyproc.get_context("fork")) as m:
        d = m.dict()
        value = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
        d["v"] = value
        assert d["v"] == value


# ------------------------------------------------------------------ Listener / Connection


def test_listener_default_handshake_timeout():
    with connection.Listener(("127.0.0.1", 0), authkey=KEY) as lst:
        assert lst._handshake_timeout == connection.HANDSHAKE_TIMEOUT == 10.0
    with pytest.raises(ValueError, match="handshake_timeout"):
        connection.Listener(("127.0.0.1", 0), authkey=KEY, handshake_timeout=0)


def test_listener_accept_gives_up_on_a_drip_client():
    with connection.Listener(("127.0.0.1", 0), authkey=KEY, handshake_timeout=1.0) as lst:
        result: list[float | None] = []
        thread = threading.Thread(
            target=lambda: result.append(_drip_until_closed(lst.address, limit=10)),
            daemon=True)
        thread.start()
        t0 = time.monotonic()
        with pytest.raises(connection.HandshakeTimeout, match="127.0.0.1") as info:
            lst.accept()
        elapsed = time.monotonic() - t0
        assert isinstance(info.value, polyproc.AuthenticationError)
        assert isinstance(info.value, TimeoutError)
        assert elapsed < 2.5, f"accept() gave up after {elapsed:.2f} s"
        thread.join(10)
        assert result and result[0] is not None  # the drip client saw the hang-up

        # The listener still accepts (and authenticates) a normal client.
        accepted = []
        server = threading.Thread(target=lambda: accepted.append(lst.accept()), daemon=True)
        server.start()
        with connection.Client(lst.address, authkey=KEY) as client:
            server.join(10)
            with accepted[0] as conn:
                client.send_bytes(b"after the drip")
                assert conn.recv_bytes() == b"after the drip"


def test_listener_without_deadline_waits():
    with connection.Listener(("127.0.0.1", 0), authkey=KEY, handshake_timeout=None) as lst:
        outcome: list[object] = []

        def accept():
            try:
                outcome.append(lst.accept())
            except EOFError as e:
                outcome.append(e)

        server = threading.Thread(target=accept, daemon=True)
        server.start()
        with socket.create_connection(lst.address, timeout=5) as sock:
            sock.recv(1024)  # the challenge; then nothing
            server.join(1.5)
            assert server.is_alive() and not outcome  # no deadline: still waiting
        server.join(10)  # our hang-up ends it
        assert not server.is_alive() and isinstance(outcome[0], EOFError)


@pytest.mark.parametrize("duplex", [True, False])
def test_recv_bytes_after_lying_header_allocates_incrementally(duplex):
    reader, writer = connection.Pipe(duplex=duplex)
    me = psutil.Process()
    outcome: list[BaseException | bytes] = []
    wfd = writer.fileno()

    def receive():
        try:
            outcome.append(reader.recv_bytes())
        except BaseException as e:
            outcome.append(e)

    with reader:
        before = _settled_rss(me)
        thread = threading.Thread(target=receive, daemon=True)
        thread.start()
        framing._write_all(wfd, memoryview(struct.pack("!i", HUGE) + b"q" * (16 * MiB)))
        grown = _settled_rss(me) - before
        writer.close()  # end of stream mid-message
        thread.join(10)
    assert grown < 100 * MiB, f"recv_bytes grew the process by {grown >> 20} MiB"
    assert isinstance(outcome[0], OSError) and not isinstance(outcome[0], EOFError)
    assert "end of file" in str(outcome[0])


def test_recv_bytes_maxlength_refuses_lying_header_unread():
    a, b = connection.Pipe()
    with a, b:
        framing._write_all(b.fileno(), memoryview(struct.pack("!i", HUGE)))
        with pytest.raises(OSError):
            a.recv_bytes(1000)
        with pytest.raises(OSError):
            a.recv_bytes()  # out of step: unreadable, as in the stdlib


@pytest.mark.parametrize("duplex", [True, False])
@pytest.mark.parametrize("size", [framing.PREALLOCATE_LIMIT, framing.PREALLOCATE_LIMIT + 1,
                                  5 * MiB + 3])
def test_large_messages_read_incrementally_arrive_whole(duplex, size):
    reader, writer = connection.Pipe(duplex=duplex)
    payload = bytes(range(251)) * (size // 251) + b"r" * (size % 251)

    def write_all():
        writer.send_bytes(payload)
        writer.send(["obj", payload])
        writer.send_bytes(payload)
        writer.send_bytes(payload)

    with reader, writer:
        thread = threading.Thread(target=write_all, daemon=True)
        thread.start()
        got = reader.recv_bytes()
        assert type(got) is bytes and got == payload
        assert reader.recv() == ["obj", payload]
        with pytest.raises(polyproc.BufferTooShort) as info:
            reader.recv_bytes_into(bytearray(10))
        assert info.value.args[0] == payload
        buf = bytearray(size + 10)
        assert reader.recv_bytes_into(buf, 10) == size and buf[10:] == payload
        thread.join(10)
