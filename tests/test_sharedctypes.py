"""polyproc.sharedctypes and its allocator (polyproc._resources.heap).

In-process API checks, children under every start method writing shared objects that the
parent reads, allocator behaviour (reuse, large arenas, threads, fork), and differential tests
that run the same program under the stdlib's ``multiprocessing`` and under polyproc.
"""

from __future__ import annotations

import ctypes
import gc
import pickle
import threading

import pytest

import polyproc
from polyproc import reduction, sharedctypes
from polyproc._resources import heap as heapmod
from polyproc.sharedctypes import (
    Array,
    RawArray,
    RawValue,
    Synchronized,
    SynchronizedArray,
    SynchronizedBase,
    SynchronizedString,
    Value,
    copy,
    synchronized,
)

METHODS = ["fork", "spawn", "forkserver"]
JOIN_TIMEOUT = 30

pytestmark = pytest.mark.usefixtures("no_leaks")


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_int)]


def _arena_of(obj):
    if isinstance(obj, SynchronizedBase):
        obj = obj.get_obj()
    return obj._wrapper._state[0][0]


def _run(ctx, target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(JOIN_TIMEOUT)
    assert p.exitcode == 0, f"child exited with {p.exitcode}"


# ---------------------------------------------------------------- raw objects


@pytest.mark.parametrize(
    ("typecode", "value"),
    [("c", b"x"), ("u", "\u00e9"), ("b", -5), ("B", 250), ("h", -300), ("H", 60000),
     ("i", -7), ("I", 7), ("l", -(2**40)), ("L", 2**40), ("q", -(2**62)), ("Q", 2**63),
     ("f", 1.5), ("d", 2.25)],
)
def test_raw_value_typecodes(typecode, value):
    v = RawValue(typecode, value)
    assert isinstance(v, sharedctypes.typecode_to_type[typecode])
    assert v.value == value
    assert RawValue(typecode).value in (0, 0.0, b"\x00", "\x00")


def test_raw_value_ctypes_type_and_structure():
    v = RawValue(ctypes.c_double, 3.5)
    assert type(v) is ctypes.c_double and v.value == 3.5
    p = RawValue(Point, 1.5, 2)
    assert (p.x, p.y) == (1.5, 2)
    assert (RawValue(Point).x, RawValue(Point).y) == (0.0, 0)


def test_bad_typecode():
    with pytest.raises(TypeError, match="bad typecode"):
        RawValue("z")


def test_raw_array_size_and_initializer():
    a = RawArray("i", 5)
    assert a[:] == [0] * 5 and len(a) == 5
    b = RawArray(ctypes.c_double, [1.0, 2.0, 3.0])
    assert b[:] == [1.0, 2.0, 3.0]
    assert isinstance(b, ctypes.Array) and b._type_ is ctypes.c_double
    c = RawArray("c", b"hello")
    assert c.value == b"hello" and c.raw == b"hello"
    assert RawArray("i", 0)[:] == []


def test_copy_is_independent():
    a = RawArray("i", [1, 2, 3])
    b = copy(a)
    assert b[:] == [1, 2, 3]
    b[0] = 99
    assert a[0] == 1
    assert _arena_of(b) is not None
    v = copy(RawValue(Point, 2.0, 3))
    assert (v.x, v.y) == (2.0, 3)


def test_memory_is_zeroed_when_reused():
    for _ in range(3):
        a = RawArray("q", [-1] * 64)
        del a
        gc.collect()
        assert RawArray("q", 64)[:] == [0] * 64
        assert RawValue("d").value == 0.0


# ---------------------------------------------------------------- synchronized wrappers


def test_value_with_default_lock():
    v = Value("i", 7)
    assert isinstance(v, Synchronized)
    assert v.value == 7
    v.value += 1
    assert v.get_obj().value == 8
    lock = v.get_lock()
    assert hasattr(lock, "acquire") and hasattr(lock, "release")
    with v:
        with v.get_lock():  # the default lock is recursive
            v.value = 10
    assert v.acquire()
    v.release()
    assert v.value == 10
    assert repr(v) == "<Synchronized wrapper for c_int(10)>"


def test_value_lock_false_is_raw():
    v = Value("d", 1.5, lock=False)
    assert type(v) is ctypes.c_double and v.value == 1.5
    a = Array("i", 3, lock=False)
    assert isinstance(a, ctypes.Array) and a[:] == [0, 0, 0]


def test_value_with_given_lock():
    lock = threading.Lock()
    v = Value("i", 1, lock=lock)
    assert v.get_lock() is lock
    a = Array("i", 3, lock=lock)
    assert a.get_lock() is lock
    plock = polyproc.Lock()
    assert Value("i", lock=plock).get_lock() is plock


def test_value_with_ctx():
    ctx = polyproc.get_context("spawn")
    v = Value("i", 1, ctx=ctx)
    assert v.value == 1
    v2 = ctx.Value("i", 2)
    assert isinstance(v2, Synchronized) and v2.value == 2


@pytest.mark.parametrize("bad", ["notalock", 42, object()])
def test_value_with_non_lock_raises_attribute_error(bad):
    with pytest.raises(AttributeError, match="has no method 'acquire'"):
        Value("i", lock=bad)
    with pytest.raises(AttributeError, match="has no method 'acquire'"):
        Array("i", 2, lock=bad)


def test_array_indexing_and_slicing():
    a = Array("i", range(10))
    assert isinstance(a, SynchronizedArray)
    assert len(a) == 10
    assert a[3] == 3 and a[-1] == 9
    assert a[2:5] == [2, 3, 4]
    assert a[::3] == [0, 3, 6, 9]
    a[0] = 100
    a[1:3] = [101, 102]
    a[5:10:2] = [0, 0, 0]
    assert a[:] == [100, 101, 102, 3, 4, 0, 6, 0, 8, 0]
    assert a.get_obj()[:] == a[:]
    with pytest.raises(IndexError):
        a[10]
    assert repr(a).startswith("<SynchronizedArray wrapper for <")


def test_char_array_is_synchronized_string():
    s = Array("c", b"hello world")
    assert isinstance(s, SynchronizedString)
    assert s.value == b"hello world" and s.raw == b"hello world"
    s.value = b"bye"
    assert s.value == b"bye"
    assert s.raw == b"bye\x00o world"
    s.raw = b"x" * 11
    assert s[0:3] == b"xxx" and s[0] == b"x"
    s[0] = b"y"
    assert s.value == b"y" + b"x" * 10
    t = Array("c", 4)
    assert t.raw == b"\x00" * 4 and t.value == b""


def test_synchronized_structure():
    p = synchronized(RawValue(Point, 1.0, 2))
    assert type(p).__name__ == "SynchronizedPoint"
    assert isinstance(p, SynchronizedBase)
    assert (p.x, p.y) == (1.0, 2)
    p.x = 4.5
    assert p.get_obj().x == 4.5
    assert type(synchronized(RawValue(Point))) is type(p)  # one class per structure
    v = Value(Point, 3.0, 4)
    assert (v.x, v.y) == (3.0, 4)


def test_synchronized_picks_the_wrapper():
    assert type(synchronized(RawValue("i"))) is Synchronized
    assert type(synchronized(RawArray("d", 2))) is SynchronizedArray
    assert type(synchronized(RawArray("c", 2))) is SynchronizedString
    lock = threading.RLock()
    assert synchronized(RawValue("i"), lock).get_lock() is lock
    with pytest.raises(TypeError, match="already synchronized"):
        synchronized(Value("i"))


def test_context_factories_and_module_names():
    assert polyproc.RawValue("i", 3).value == 3
    assert polyproc.RawArray("i", [1, 2])[:] == [1, 2]
    assert polyproc.Value("i", 4).value == 4
    assert polyproc.Array("i", [5, 6])[:] == [5, 6]
    assert polyproc.Value("i", lock=False).value == 0
    assert isinstance(polyproc.Array("i", 1, lock=False), ctypes.Array)


# ---------------------------------------------------------------- pickling


@pytest.mark.parametrize(
    "make", [lambda: RawValue("i"), lambda: RawArray("d", 3), lambda: Value("i"),
             lambda: Array("c", 3)],
    ids=["RawValue", "RawArray", "Value", "Array"],
)
def test_pickling_only_while_spawning(make):
    with pytest.raises(RuntimeError, match="through inheritance"):
        reduction.dumps(make())


def test_plain_ctypes_objects_still_pickle():
    RawValue("i")  # registers the shared reducer for c_int
    RawValue("d")
    assert pickle.loads(reduction.dumps(ctypes.c_int(5))).value == 5
    assert pickle.loads(reduction.dumps([ctypes.c_double(1.5)]))[0].value == 1.5


# ---------------------------------------------------------------- the allocator


def test_blocks_do_not_overlap_and_are_aligned():
    objs = []
    for i in range(300):
        n = 1 + (i * 37) % 500
        a = RawArray("B", [i % 256] * n)
        assert ctypes.addressof(a) % heapmod.ALIGNMENT == 0
        objs.append(a)
        if i % 3 == 0:
            objs.pop(len(objs) // 2)  # free some, so later blocks reuse holes
    for a in objs:
        first = a[0]
        assert a[:] == [first] * len(a)


def test_large_block_gets_own_arena_and_is_released():
    gc.collect()
    before = heapmod.heap._stats()
    big = RawArray("b", heapmod.LARGE_BLOCK * 2)
    arena = _arena_of(big)
    assert arena.size >= heapmod.LARGE_BLOCK * 2
    assert heapmod.heap._stats()["large_arenas"] == before["large_arenas"] + 1
    big[-1] = 5
    assert big[-1] == 5
    del big, arena
    gc.collect()
    assert heapmod.heap._stats()["large_arenas"] == before["large_arenas"]


def test_malloc_rejects_bad_sizes():
    with pytest.raises(ValueError):
        heapmod.heap.malloc(-1)
    with pytest.raises(TypeError):
        heapmod.heap.malloc(1.5)


def test_free_coalesces_and_reuses():
    h = heapmod.Heap()
    blocks = [h.malloc(100) for _ in range(3)]
    arena = blocks[0][0]
    assert all(b[0] is arena for b in blocks)
    assert [b[1] for b in blocks] == [0, 112, 224]  # rounded up to the alignment
    for i in (1, 0, 2):
        h.free(blocks[i])
    assert h._free[arena] == [(0, heapmod.ARENA_SIZE)]
    assert h._stats() == {"small_arenas": 1, "large_arenas": 0, "blocks": 0}
    assert h.malloc(200)[1] == 0


def test_free_while_locked_is_deferred():
    h = heapmod.Heap()
    first = h.malloc(64)
    with h._lock:  # as when GC frees a block inside malloc on the same thread
        h.free(first)
        assert h._pending == [first]
    again = h.malloc(64)
    assert h._pending == [] and again[:2] == first[:2]


def test_free_of_foreign_block_is_ignored():
    h = heapmod.Heap()
    other = heapmod.Heap().malloc(10)
    h.free(other)  # e.g. a block inherited from a parent process
    assert h._stats()["blocks"] == 0


def test_threads_allocate_concurrently():
    results: dict[int, list] = {}
    errors = []

    def work(k):
        try:
            mine = [RawValue("q", k * 1000 + i) for i in range(200)]
            results[k] = mine
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    assert not errors
    for k, mine in results.items():
        assert [v.value for v in mine] == [k * 1000 + i for i in range(200)]


def test_many_values_share_an_arena():
    vals = [RawValue("i", i) for i in range(50)]
    assert len({id(_arena_of(v)) for v in vals}) <= 2


def _fork_child_allocates(parent_arena_ids, shared):
    obj = RawArray("i", [7] * 16)
    own = _arena_of(obj).ident not in parent_arena_ids
    shared.value = 1 if own and heapmod.heap._stats()["blocks"] == 1 else 2


def test_fork_child_allocates_from_its_own_arenas():
    shared = RawValue("i")
    ids = {a.ident for a in heapmod.heap._small}
    _run(polyproc.get_context("fork"), _fork_child_allocates, ids, shared)
    assert shared.value == 1


# ---------------------------------------------------------------- children


def _child_modifies(v, a, rv, ra, s):
    with v.get_lock():
        v.value += 10
    a[0] = -1
    a[1:3] = [a[1] * 2, a[2] * 2]
    rv.value = 2.5
    ra[:] = [x + 1 for x in ra]
    s.value = b"child"


@pytest.mark.parametrize("method", METHODS)
def test_child_modifies_shared_objects(method):
    ctx = polyproc.get_context(method)
    v = ctx.Value("i", 5)
    a = ctx.Array("d", [1.0, 2.0, 3.0])
    rv = ctx.RawValue("d", 0.0)
    ra = ctx.RawArray("q", [10, 20, 30])
    s = ctx.Array("c", 10)
    _run(ctx, _child_modifies, v, a, rv, ra, s)
    assert v.value == 15
    assert a[:] == [-1.0, 4.0, 6.0]
    assert rv.value == 2.5
    assert ra[:] == [11, 21, 31]
    assert s.value == b"child"


def _child_checks_arena_sharing(v1, v2, big, out):
    same = _arena_of(v1) is _arena_of(v2)
    v1.value, v2.value = 1, 2
    big[0], big[-1] = 3, 4
    out.value = 1 if same else 2


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_child_maps_each_arena_once(method):
    ctx = polyproc.get_context(method)
    v1, v2 = RawValue("i"), RawValue("i")
    assert _arena_of(v1) is _arena_of(v2)
    big = RawArray("b", heapmod.LARGE_BLOCK)
    out = RawValue("i")
    _run(ctx, _child_checks_arena_sharing, v1, v2, big, out)
    assert out.value == 1
    assert (v1.value, v2.value, big[0], big[-1]) == (1, 2, 3, 4)


def _grandchild(v, a):
    v.value += 100
    a[1] = 42


def _child_starts_grandchild(method, v, a):
    v.value += 1
    _run(polyproc.get_context(method), _grandchild, v, a)


@pytest.mark.parametrize(("outer", "inner"), [("spawn", "spawn"), ("fork", "forkserver"),
                                              ("forkserver", "fork")])
def test_grandchild_gets_shared_objects(outer, inner):
    v = Value("i", 0, ctx=polyproc.get_context("spawn"))  # a fork-context lock can't be spawned
    a = RawArray("i", 3)
    _run(polyproc.get_context(outer), _child_starts_grandchild, inner, v, a)
    assert v.value == 101
    assert a[:] == [0, 42, 0]


# ---------------------------------------------------------------- differential tests


def _count_worker(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def counter_program(mp, method):
    """Four processes add 1000 each to a Value under its lock."""
    ctx = mp.get_context(method)
    v = ctx.Value("i", 0)
    procs = [ctx.Process(target=_count_worker, args=(v, 1000)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_TIMEOUT)
    return [v.value, [p.exitcode for p in procs], type(v).__name__, repr(v)]


def _array_worker(a, s, ra, d):
    a[1:4] = [9.0, 9.0, 9.0]
    a[-1] = a[0] + a[2]
    s.value = b"HELLO"
    s[6:11] = b"WORLD"
    ra[::2] = [1, 1, 1, 1]
    with d.get_lock():
        d.value = sum(a[:])


def array_program(mp, method):
    """A child writes slices of shared arrays; the parent reads them back."""
    ctx = mp.get_context(method)
    a = ctx.Array("d", [0.5 * i for i in range(10)])
    s = ctx.Array("c", b"hello world")
    ra = ctx.RawArray("i", 8)
    d = ctx.Value("d", 0.0)
    p = ctx.Process(target=_array_worker, args=(a, s, ra, d))
    p.start()
    p.join(JOIN_TIMEOUT)
    return [p.exitcode, a[:], a[2:8:2], a[-3:], len(a), s.value, s.raw, s[0:5], s[4],
            ra[:], ra[1::2], d.value, type(a).__name__, type(s).__name__, type(ra).__name__,
            repr(d)]


def raw_program(mp, method):
    """Raw objects, copies and lock=False, read in a child by fork/spawn."""
    ctx = mp.get_context(method)
    v = ctx.Value("q", 2**40, lock=False)
    a = ctx.Array("h", [1, -2, 3], lock=False)
    return [type(v).__name__, v.value, type(a).__name__, a[:], mp.sharedctypes.copy(a)[:],
            repr(mp.sharedctypes.synchronized(mp.sharedctypes.RawValue("b", -3)))]


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("program", [counter_program, array_program, raw_program],
                         ids=["counter", "array", "raw"])
def test_differential_against_stdlib(program, method):
    # Imported here, not at collection: other tests check that children don't import it.
    import multiprocessing as std_mp
    import multiprocessing.sharedctypes  # noqa: F401 - so std_mp.sharedctypes exists

    expected = program(std_mp, method)
    got = program(polyproc, method)
    assert got == expected
    if program is counter_program:
        assert got[0] == 4000
