"""Managers with ``serializer='xmlrpclib'``: messages as XML-RPC over the same authenticated,
size-limited channel; what it carries and refuses; serializer mismatches; restart at the
same address (CPython's test_remote / test_rapid_restart, in polyproc's terms)."""

from __future__ import annotations

import datetime
import os
import pickle
import queue
import socket
import time

import pytest

import polyproc
from _xml_targets import QueueClient, QueueManager, append_to, put_values
from polyproc._managers import codec as mcodec
from polyproc._managers import xmlcodec
from polyproc._managers.channel import open_channel
from polyproc.managers import BaseManager, RemoteError, SyncManager

pytestmark = pytest.mark.timeout(60)

AUTHKEY = b"xmlrpc-test-key-0123456789abcdef"
#: What VALUES comes back as: tuples become lists; bytes, big ints and CRs survive.
EXPECTED = ["hello world", None, True, 2.25, "hall\xe5 v\xe4rlden",
            "\u043f\u0440\u0438\u0432\u0456\u0442", b"hall\xe5 v\xe4rlden", 2**40, -(2**70),
            "line\rbreak\r\n", {"nested": [1, [2, 3]]}]


@pytest.fixture(scope="module")
def xmgr():
    m = SyncManager(serializer="xmlrpclib", ctx=polyproc.get_context("fork"))
    m.start()
    yield m
    m.shutdown()


def _drain(q) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


@pytest.mark.timeout(90)
def test_remote_client_in_a_child(ctx, no_leaks):
    manager = QueueManager(address=("127.0.0.1", 0), authkey=AUTHKEY, serializer="xmlrpclib",
                           ctx=ctx)
    manager.start()
    try:
        p = ctx.Process(target=put_values, args=(manager.address, AUTHKEY))
        p.start()
        client = QueueClient(address=manager.address, authkey=AUTHKEY, serializer="xmlrpclib")
        client.connect()
        q = client.get_queue()
        assert q.get(timeout=30) == EXPECTED
        p.join(30)
        assert p.exitcode == 0
        # What XML-RPC cannot carry is refused on the sending side, and the connection
        # stays usable.
        with pytest.raises(TypeError, match="serializer='xmlrpclib'"):
            q.put(time.sleep)
        q.put("still works")
        assert q.get(timeout=10) == "still works"
        del q
    finally:
        manager.shutdown()


@pytest.mark.timeout(90)
def test_proxy_passed_to_a_child(ctx, no_leaks):
    with SyncManager(serializer="xmlrpclib", ctx=ctx) as m:
        shared = m.list()
        p = ctx.Process(target=append_to, args=(shared, "from child"))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert shared[:] == ["from child", ["from child"]]
        del shared


def test_rapid_restart_at_the_same_address(no_leaks):
    manager = QueueManager(address=("127.0.0.1", 0), authkey=AUTHKEY, serializer="xmlrpclib")
    server = manager.get_server()
    addr = server.address
    server.listener.close()  # the stdlib Listener's close(): stops accepting
    with pytest.raises(OSError):
        socket.create_connection(addr, timeout=5).close()
    manager.start()
    try:
        q = manager.get_queue()
        q.put("first")
        assert q.get(timeout=10) == "first"
        del q
    finally:
        manager.shutdown()
    second = QueueManager(address=addr, authkey=AUTHKEY, serializer="xmlrpclib")
    second.start()
    try:
        assert second.address == addr
        q = second.get_queue()
        _drain(q)
        q.put(["second", 2])
        assert q.get(timeout=10) == ["second", 2]
        del q
    finally:
        second.shutdown()


def test_sync_manager_types(xmgr):
    d = xmgr.dict(a=1)
    d["b"] = [1, 2]
    assert d.copy() == {"a": 1, "b": [1, 2]}
    assert sorted(d) == ["a", "b"]  # __iter__ returns an iterator proxy (a #PROXY reply)
    assert d | {"c": 3} == {"a": 1, "b": [1, 2], "c": 3}
    with pytest.raises(KeyError):
        d["missing"]
    lst = xmgr.list([0, 1, 2, 3, 4])
    assert lst[1:3] == [1, 2] and lst[::-1] == [4, 3, 2, 1, 0]  # slices travel as structs
    lst[0:2] = ["x"]
    del lst[-1:]
    assert lst[:] == ["x", 2, 3]
    with pytest.raises(IndexError):
        lst[10]
    s = xmgr.set([1, 2])
    s.add(3)
    assert sorted(s) == [1, 2, 3] and 2 in s
    assert s.copy() == {1, 2, 3}  # sets travel as tagged structs: a set comes back
    assert s | {4} == {1, 2, 3, 4} and {0} | s == {0, 1, 2, 3}
    with pytest.raises(TypeError):
        s | [4]  # set.__or__ returns NotImplemented for a list, which travels too
    ns = xmgr.Namespace(x=1)
    ns.y = datetime.datetime(2024, 5, 6, 7, 8, 9)
    assert ns.x == 1 and ns.y == datetime.datetime(2024, 5, 6, 7, 8, 9)
    with pytest.raises(AttributeError):
        _ = ns.nothing
    v = xmgr.Value("i", 2**40)
    assert v.value == 2**40
    q = xmgr.Queue()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    ev = xmgr.Event()
    ev.set()
    assert ev.wait(1)
    lock = xmgr.Lock()
    with lock:
        pass


def test_what_cannot_travel(xmgr):
    d = xmgr.dict()
    with pytest.raises(TypeError, match="str keys"):
        d["k"] = {1: 2}
    with pytest.raises(TypeError, match="ListProxy"):
        d["k"] = xmgr.list()  # proxies are pickle-only
    with pytest.raises(TypeError, match="object of type object"):
        d["k"] = object()  # never silently turned into a dict of its __dict__
    with pytest.raises(ValueError, match="XML 1.0"):
        d["k"] = "nul\x00"
    loop: list = []
    loop.append(loop)
    with pytest.raises(TypeError, match="contains itself"):
        d["k"] = loop
    assert len(d) == 0
    # A result the server cannot encode comes back as a RemoteError.
    ns = xmgr.Namespace(x=1)
    with pytest.raises(RemoteError, match="Namespace"):
        ns._getvalue()


class Custom(Exception):
    pass


class Thrower:
    def fail(self, kind: str) -> None:
        if kind == "custom":
            raise Custom("custom message")
        if kind == "full":
            raise queue.Full
        raise OSError(2, "No such file", "/nowhere")


class ThrowerManager(BaseManager):
    pass


ThrowerManager.register("Thrower", Thrower)


def test_exceptions_come_back(no_leaks):
    with ThrowerManager(serializer="xmlrpclib", ctx=polyproc.get_context("fork")) as m:
        t = m.Thrower()
        with pytest.raises(FileNotFoundError) as info:
            t.fail("os")
        assert info.value.errno == 2 and info.value.filename == "/nowhere"
        with pytest.raises(queue.Full):
            t.fail("full")
        # Other classes are not rebuilt from a name the peer sent: a RemoteError names them.
        with pytest.raises(RemoteError, match="Custom: custom message"):
            t.fail("custom")
        del t


def test_serializer_mismatch_is_explained(xmgr, no_leaks):
    pickle_client = SyncManager(address=xmgr.address, authkey=xmgr._authkey)
    with pytest.raises(RemoteError, match="serializer mismatch"):
        pickle_client.connect()
    with SyncManager(ctx=polyproc.get_context("fork")) as pickle_server:
        xml_client = SyncManager(address=pickle_server.address,
                                 authkey=pickle_server._authkey, serializer="xmlrpclib")
        with pytest.raises(RemoteError, match="serializer mismatch"):
            xml_client.connect()
        assert pickle_server.list([1])[:] == [1]  # still serving its own clients
    assert xmgr.list([2])[:] == [2]


def test_a_pickle_sent_to_an_xmlrpc_server_is_never_unpickled(xmgr, tmp_path):
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    chan = open_channel(xmgr.address, bytes(xmgr._authkey), timeout=10)
    try:
        chan.settimeout(10)
        chan.send_bytes(pickle.dumps((None, "dummy", (Evil(),), {})))
        kind, text = pickle.loads(chan.recv_bytes())  # the refusal, written as a pickle
    finally:
        chan.close()
    assert kind == "#TRACEBACK" and "serializer mismatch" in text
    assert not marker.exists()


def test_size_limit_is_kept(no_leaks):
    with SyncManager(serializer="xmlrpclib", max_message_size=10_000,
                     ctx=polyproc.get_context("fork")) as m:
        lst = m.list()
        with pytest.raises(ValueError, match="max_message_size"):
            lst.append("x" * 20_000)
        lst.append("x" * 100)
        assert len(lst) == 1
        # The server enforces it too: a longer frame drops the connection unread.
        chan = open_channel(m.address, bytes(m._authkey), timeout=10)
        try:
            chan.settimeout(10)
            chan.send_bytes(xmlcodec.XmlCodec().request(None, "dummy", ("y" * 20_000,), {}))
            with pytest.raises((EOFError, OSError)):
                chan.recv_bytes()
        finally:
            chan.close()
        assert len(lst) == 1


def test_unknown_serializer_names_the_supported_ones():
    with pytest.raises(ValueError, match="'pickle' and 'xmlrpclib'"):
        SyncManager(serializer="json")


def test_codec_round_trips():
    codec = xmlcodec.XmlCodec()
    for value in [0, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 10**40, 1.5, float("inf"),
                  "", "tab\tlf\ncr\r<&>", b"\x00\xff", [], {}, {"k": None}, {1, "a"},
                  frozenset([2]), [{3}], slice(None, 5), NotImplemented,
                  datetime.datetime(2000, 1, 1, 0, 0, 1)]:
        kind, result = codec.load_reply(codec.reply(mcodec.RETURN, value))
        assert kind == mcodec.RETURN and result == value and type(result) is type(value)
    ident, name, args, kwds = codec.load_request(
        codec.request(7, "__getitem__", (slice(1, None, 2),), {"x": (1,)}))
    assert (ident, name, args, kwds) == (7, "__getitem__", [slice(1, None, 2)], {"x": [1]})
    with pytest.raises(mcodec.WrongSerializer):
        codec.load_reply(pickle.dumps(("#RETURN", 1)))
    with pytest.raises(mcodec.WrongSerializer):
        mcodec.Dumper().load_reply(codec.reply(mcodec.RETURN, 1))
