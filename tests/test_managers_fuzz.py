"""Bad peers against a manager server and a plain ``connection.Listener``: garbage, truncated
frames, huge length prefixes, wrong keys, silence, oversized authenticated messages.

Every bad peer must be dropped (with a logged reason, for the manager) and the server must
keep serving: a good client is checked after each one.
"""

from __future__ import annotations

import logging
import pickle
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _log_records import Records
from polyproc import connection
from polyproc._managers.channel import Channel
from polyproc._wire import auth
from polyproc.managers import SyncManager

pytestmark = pytest.mark.timeout(120)

KEY = b"fuzz-secret-key"
MAX_MESSAGE = 64 * 1024
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server():
    """A manager server in a thread of this process, its log records, and a check."""
    logger = logging.getLogger("polyproc.managers")
    handler = Records()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    mgr = SyncManager(address=("127.0.0.1", 0), authkey=KEY, max_message_size=MAX_MESSAGE,
                      handshake_timeout=1.0)
    srv = mgr.get_server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv, handler
    finally:
        srv.stop()
        thread.join(10)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _good_client_works(address) -> None:
    m = SyncManager(address=address, authkey=KEY, connect_timeout=5)
    m.connect()
    d = m.dict()
    d["k"] = "v"
    assert d["k"] == "v" and len(d) == 1
    m._endpoint().close()


def _raw(address, payload: bytes, *, read: bool = True) -> None:
    """Connect, send ``payload``, half-close, drain for a moment, close."""
    with socket.create_connection(address, timeout=5) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            if read:
                s.settimeout(2)
                while s.recv(4096):
                    pass
        except OSError:
            pass  # the server may hang up first


def _assert_dropped_and_alive(server, before: int) -> None:
    srv, records = server
    new = records.wait_for_more_than(before)
    assert new, "the bad peer was not logged"
    assert any("dropped" in r.getMessage() or "lost" in r.getMessage() for r in new)
    _good_client_works(srv.address)


# ------------------------------------------------------------------ before authentication


@FUZZ
@given(garbage=st.binary(min_size=0, max_size=600))
def test_garbage(server, garbage):
    before = len(server[1].records)
    _raw(server[0].address, garbage)
    _assert_dropped_and_alive(server, before)


@FUZZ
@given(length=st.integers(min_value=auth.MAX_MESSAGE + 1, max_value=2**31 - 1),
       tail=st.binary(max_size=64))
def test_huge_length_prefix(server, length, tail):
    before = len(server[1].records)
    _raw(server[0].address, struct.pack("!i", length) + tail)
    _assert_dropped_and_alive(server, before)


@FUZZ
@given(length=st.integers(min_value=0, max_value=2**64 - 1), negative=st.integers(-2**31, -1))
def test_extended_and_negative_lengths(server, length, negative):
    before = len(server[1].records)
    _raw(server[0].address, struct.pack("!iQ", -1, length))
    _assert_dropped_and_alive(server, before)
    before = len(server[1].records)
    _raw(server[0].address, struct.pack("!i", negative) + b"x" * 8)
    _assert_dropped_and_alive(server, before)


@FUZZ
@given(claimed=st.integers(min_value=1, max_value=auth.MAX_MESSAGE),
       data=st.data())
def test_truncated_frame(server, claimed, data):
    sent = data.draw(st.binary(max_size=claimed - 1))
    before = len(server[1].records)
    _raw(server[0].address, struct.pack("!i", claimed) + sent)
    _assert_dropped_and_alive(server, before)


@FUZZ
@given(key=st.binary(min_size=0, max_size=64).filter(lambda k: k != KEY))
def test_wrong_key(server, key):
    before = len(server[1].records)
    sock = socket.create_connection(server[0].address, timeout=5)
    chan = Channel(sock)
    try:
        with pytest.raises(Exception):  # noqa: B017 - AuthenticationError or a hang-up
            auth.answer_challenge(chan, key)
            auth.deliver_challenge(chan, key)
    finally:
        chan.close()
    _assert_dropped_and_alive(server, before)


def test_silent_peer_times_out(server):
    before = len(server[1].records)
    with socket.create_connection(server[0].address, timeout=5) as s:
        t0 = time.monotonic()
        s.settimeout(5)
        try:
            s.recv(1024)  # the challenge
            while s.recv(1024):  # then nothing until the server gives up on us
                pass
        except OSError:
            pass
        assert time.monotonic() - t0 < 4
    new = server[1].wait_for_more_than(before)
    assert any("timed out" in r.getMessage() for r in new)
    _good_client_works(server[0].address)


def test_many_bad_peers_at_once(server):
    def bad(i):
        _raw(server[0].address, bytes([i % 256]) * (i * 7 % 300), read=False)

    threads = [threading.Thread(target=bad, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    _good_client_works(server[0].address)  # served while the bad peers are handled
    for t in threads:
        t.join(10)
    _good_client_works(server[0].address)


# ------------------------------------------------------------------ after authentication


def _authenticated(address) -> Channel:
    sock = socket.create_connection(address, timeout=5)
    chan = Channel(sock)
    auth.answer_challenge(chan, KEY)
    auth.deliver_challenge(chan, KEY)
    return chan


@FUZZ
@given(garbage=st.binary(max_size=300))
def test_authenticated_garbage_gets_an_error_reply(server, garbage):
    chan = _authenticated(server[0].address)
    try:
        chan.send_bytes(garbage)
        try:
            kind, _result = pickle.loads(chan.recv_bytes())
        except EOFError:
            kind = None  # e.g. a pickle of a decref message: no reply, then we close
        except Exception:
            kind = "#TRACEBACK"
        if kind is not None:
            assert kind in ("#TRACEBACK", "#RETURN", "#ERROR", "#UNSERIALIZABLE")
    except TimeoutError:
        pass  # a one-way message: no reply
    finally:
        chan.close()
    _good_client_works(server[0].address)


def test_authenticated_oversized_message_is_dropped(server):
    before = len(server[1].records)
    chan = _authenticated(server[0].address)
    try:
        chan.sock.sendall(struct.pack("!i", MAX_MESSAGE + 1))
        chan.settimeout(5)
        with pytest.raises((EOFError, OSError)):
            chan.recv_bytes()
    finally:
        chan.close()
    new = server[1].wait_for_more_than(before)
    assert any("max_message_size" in r.getMessage() for r in new)
    _good_client_works(server[0].address)


# ------------------------------------------------------------------ plain Listener


@pytest.fixture(scope="module")
def listener():
    """A ``connection.Listener`` echoing for good clients; bad peers' errors are recorded."""
    lst = connection.Listener(("127.0.0.1", 0), authkey=KEY)
    errors: list[BaseException] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn = lst.accept()
            except Exception as e:  # a bad peer: must not end the loop
                errors.append(e)
                continue
            with conn:
                try:
                    conn.send(("echo", conn.recv()))
                except Exception as e:
                    errors.append(e)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield lst, errors
    stop.set()
    # Wake accept() with a peer that hangs up at once: its handshake fails fast whatever
    # state the listener's handshake gate is in (an authenticating Client could wait on it).
    _raw(lst.address, b"", read=False)
    thread.join(10)
    assert not thread.is_alive(), "the listener's accept() did not return for a peer that hung up"
    lst.close()


def _listener_good_client(address) -> None:
    with connection.Client(address, authkey=KEY) as c:
        c.send(["ping", 1])
        assert c.recv() == ("echo", ["ping", 1])


@FUZZ
@given(payload=st.one_of(
    st.binary(max_size=600),
    st.integers(auth.MAX_MESSAGE + 1, 2**31 - 1).map(lambda n: struct.pack("!i", n)),
    st.integers(0, 2**64 - 1).map(lambda n: struct.pack("!iQ", -1, n)),
    st.integers(1, auth.MAX_MESSAGE).map(lambda n: struct.pack("!i", n) + b"x" * (n // 2)),
))
def test_listener_survives_bad_peers(listener, payload):
    lst, errors = listener
    before = len(errors)
    _raw(lst.address, payload)
    deadline = time.monotonic() + 10
    while len(errors) == before and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(errors) > before, "the bad peer was not rejected"
    _listener_good_client(lst.address)


@FUZZ
@given(key=st.binary(min_size=1, max_size=64).filter(lambda k: k != KEY))
def test_listener_wrong_key(listener, key):
    lst, errors = listener
    with pytest.raises(Exception):  # noqa: B017 - AuthenticationError or a hang-up
        connection.Client(lst.address, authkey=key)
    _listener_good_client(lst.address)
