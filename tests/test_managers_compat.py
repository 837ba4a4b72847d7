"""Managers against CPython's documented behaviour: Python 3.14's list/dict/set proxy methods
(on every version), unstarted managers, exceptions without reference cycles (gh-106558),
and a process-wide socket.setdefaulttimeout()."""

from __future__ import annotations

import collections.abc
import gc
import queue
import socket
import threading
import time
import types
import weakref

import pytest

import polyproc
from polyproc import managers
from polyproc.managers import (
    DictProxy,
    ListProxy,
    ManagerNotStartedError,
    SetProxy,
    SharedMemoryManager,
    SyncManager,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", params=["pickle", "xmlrpclib"])
def manager(request):
    m = SyncManager(serializer=request.param, ctx=polyproc.get_context("fork"))
    m.start()
    yield m
    m.shutdown()


@pytest.fixture(scope="module")
def pmanager():
    m = SyncManager(ctx=polyproc.get_context("fork"))
    m.start()
    yield m
    m.shutdown()


# ==================================================================== 3.14 proxy methods


def test_list_clear_and_copy(manager):
    lst = manager.list([1, 2, 3])
    copy = lst.copy()
    assert copy == [1, 2, 3] and type(copy) is list
    copy.append(4)
    assert len(lst) == 3  # a local copy
    lst.clear()
    assert lst[:] == [] and len(lst) == 0


def test_dict_or_ior_reversed_fromkeys(manager):
    d = manager.dict(a=1, b=2)
    merged = d | {"c": 3}
    assert merged == {"a": 1, "b": 2, "c": 3} and type(merged) is dict
    assert {"z": 0} | d == {"z": 0, "a": 1, "b": 2}  # __ror__
    assert {"a": 9} | d == {"a": 1, "b": 2}
    assert len(d) == 2  # neither changed the shared dict
    result = d.__ior__({"c": 3})
    d |= {"d": 4}
    assert type(d) is DictProxy and result is d
    assert d.copy() == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert list(reversed(d)) == ["d", "c", "b", "a"]
    fresh = d.fromkeys(["x", "y"], 0)
    assert fresh == {"x": 0, "y": 0} and type(fresh) is dict
    assert d.fromkeys(["k"]) == {"k": None}


def test_set_proxy(manager):
    s = manager.set([1, 2, 3])
    assert type(s) is SetProxy
    assert len(s) == 3 and 2 in s and 5 not in s
    assert sorted(s) == [1, 2, 3]
    s.add(4)
    s.discard(10)
    s.remove(4)
    with pytest.raises(KeyError):
        s.remove(10)
    assert sorted(s | {9}) == [1, 2, 3, 9] and sorted({9} | s) == [1, 2, 3, 9]
    assert sorted(s & {2, 3, 7}) == [2, 3] and sorted({2, 7} & s) == [2]
    assert sorted(s - {1}) == [2, 3] and sorted({1, 8} - s) == [8]
    assert sorted(s ^ {3, 4}) == [1, 2, 4] and sorted({3, 4} ^ s) == [1, 2, 4]
    assert sorted(s.union([7])) == [1, 2, 3, 7]
    assert sorted(s.intersection([1, 7])) == [1]
    assert sorted(s.difference([1])) == [2, 3]
    assert sorted(s.symmetric_difference([1, 7])) == [2, 3, 7]
    assert s.issubset([1, 2, 3, 4]) and s.issuperset([1]) and s.isdisjoint([8])
    assert s <= {1, 2, 3} and s < {1, 2, 3, 4} and s >= {1} and s > {1}
    assert len(s) == 3  # none of the above changed it
    same = s
    s |= {5}
    s &= {1, 2, 5}
    s -= {1}
    s ^= {2, 6}
    assert s is same and type(s) is SetProxy
    assert sorted(s) == [5, 6]
    s.update([7])
    s.intersection_update([5, 6, 7, 8])
    s.difference_update([5])
    s.symmetric_difference_update([6, 9])
    assert sorted(s) == [7, 9]
    assert s.pop() in (7, 9)
    s.clear()
    assert len(s) == 0
    with pytest.raises(KeyError):
        s.pop()
    assert len(manager.set()) == 0
    assert sorted(manager.set({"a": 1, "b": 2})) == ["a", "b"]  # set(mapping): its keys


def test_abc_registration_and_generic_aliases(pmanager):
    assert isinstance(pmanager.list(), collections.abc.MutableSequence)
    assert isinstance(pmanager.dict(), collections.abc.MutableMapping)
    assert isinstance(pmanager.set(), collections.abc.MutableSet)
    for proxy_type in (ListProxy, DictProxy, SetProxy):
        assert isinstance(proxy_type[int], types.GenericAlias)
    # Iterating a list proxy goes through __getitem__, so it sees changes made meanwhile.
    lst = pmanager.list(range(3))
    it = iter(lst)
    lst[0] = 100
    assert next(it) == 100


def _add_to_set(s, d, items):
    for item in items:
        s.add(item)
    d["set"].add("via dict")


@pytest.mark.timeout(90)
def test_set_proxy_in_a_child(ctx, no_leaks):
    with SyncManager(ctx=ctx) as m:
        s = m.set()
        d = m.dict()
        d["set"] = s  # a nested set proxy keeps its referent alive
        p = ctx.Process(target=_add_to_set, args=(s, d, ["a", "b"]))
        p.start()
        p.join(60)
        assert p.exitcode == 0
        assert sorted(s) == ["a", "b", "via dict"]
        del s, d


# ==================================================================== unstarted managers


def test_shared_memory_manager_not_started():
    smm = SharedMemoryManager()
    for make in (lambda: smm.SharedMemory(size=9), lambda: smm.ShareableList([1])):
        with pytest.raises(ValueError, match=r"not started: call start\(\).* with block"):
            make()
        with pytest.raises(polyproc.ProcessError):
            make()
    with SharedMemoryManager() as smm2:
        sl = smm2.ShareableList("howdy")
        assert list(sl) == list("howdy")
        sl.shm.close()
    with pytest.raises(ManagerNotStartedError, match="has shut down"):
        smm2.SharedMemory(size=9)


def test_sync_manager_not_started():
    m = SyncManager()
    with pytest.raises(ManagerNotStartedError, match=r"start\(\)"):
        m.list()


# ==================================================================== gh-106558


class _FakeConnection:
    def send(self, payload):
        pass

    def recv(self):
        return "#ERROR", queue.Empty()


def _raised_and_dropped(call, exc_type) -> object:
    """Call ``call`` (which raises ``exc_type``) with the collector off; return a weak
    reference to the exception after the except block, as CPython's test does."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            call()
        except exc_type as e:
            wr = weakref.ref(e)
        return wr()
    finally:
        if was_enabled:
            gc.enable()


def test_exceptions_are_not_kept_in_a_cycle(manager):
    q = manager.Queue()
    assert _raised_and_dropped(q.get_nowait, queue.Empty) is None
    full = manager.Queue(1)
    full.put(1)
    assert _raised_and_dropped(lambda: full.put_nowait(2), queue.Full) is None
    barrier = manager.Barrier(2)
    barrier.abort()
    assert _raised_and_dropped(barrier.wait, threading.BrokenBarrierError) is None
    # A '#TRACEBACK' reply (the method is not exposed): a RemoteError.
    lst = manager.list()
    assert _raised_and_dropped(lambda: lst._callmethod("nothing"),
                               managers.RemoteError) is None
    assert _raised_and_dropped(
        lambda: managers.dispatch(_FakeConnection(), None, None), queue.Empty) is None


# ==================================================================== default socket timeout


def test_a_default_socket_timeout_does_not_reach_manager_sockets(ctx, no_leaks):
    """A process-wide socket.setdefaulttimeout() must not make manager connections time out:
    neither a reply that takes longer, nor a connection idle for longer, nor the server's
    listening socket (also in a forked manager process, which inherits the default)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.05)
    try:
        with SyncManager(ctx=ctx) as m:
            ev = m.Event()
            assert ev.wait(0.3) is False  # the reply comes after the default timeout
            time.sleep(0.3)  # the connection stays idle longer than the default timeout
            lst = m.list([1])
            assert lst[:] == [1]
            other = threading.Thread(target=lst.append, args=(2,))  # a new connection
            other.start()
            other.join(10)
            assert lst[:] == [1, 2]
            del ev, lst
        # A server run in this process (get_server + serve_forever) too.
        server = SyncManager(address=("127.0.0.1", 0)).get_server()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        client = SyncManager(address=server.address)
        client.connect()
        q = client.Queue()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.3)
        time.sleep(0.3)
        q.put(1)
        assert q.get(timeout=5) == 1
        del q
        server.stop()
        thread.join(10)
        assert not thread.is_alive()
    finally:
        socket.setdefaulttimeout(old)
