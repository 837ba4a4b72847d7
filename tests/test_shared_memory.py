"""polyproc.shared_memory: SharedMemory and ShareableList.

API and errors (against the stdlib's), children under every start method, the on-segment
format shared with the stdlib's ShareableList, differential runs, and faults: children
SIGKILLed while holding or after creating a segment, with the tree's resource tracker
unlinking what was left.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import textwrap
import time

import pytest

import polyproc
from _scripts import run_script
from polyproc.shared_memory import ShareableList, SharedMemory

METHODS = ["fork", "spawn", "forkserver"]
JOIN_TIMEOUT = 30
SHM_DIR = "/dev/shm"

pytestmark = pytest.mark.usefixtures("no_leaks")


def shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def wait_gone(name: str, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while shm_exists(name):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return True


@pytest.fixture
def shm():
    block = SharedMemory(create=True, size=64)
    yield block
    block.close()
    try:
        block.unlink()
    except FileNotFoundError:
        pass


def _std():
    """The stdlib's ``shared_memory``, imported only by the tests that compare with it (others
    check that polyproc's children never import ``multiprocessing``)."""
    from multiprocessing import shared_memory

    return shared_memory


def _std_attach(cls, **kwargs):
    """Attach with the stdlib without letting its tracker adopt (and later unlink) the block."""
    from multiprocessing import resource_tracker

    obj = cls(**kwargs)
    block = obj.shm if isinstance(obj, _std().ShareableList) else obj
    resource_tracker.unregister(block._name, "shared_memory")
    return obj


# ---------------------------------------------------------------- SharedMemory API


def test_create_attach_and_read(shm):
    assert shm.name.startswith("pp_") and shm_exists(shm.name)
    assert shm.size == 64 and len(shm.buf) == 64
    assert bytes(shm.buf) == b"\x00" * 64
    shm.buf[:5] = b"hello"
    other = SharedMemory(shm.name)
    try:
        assert other.name == shm.name and other.size == 64
        assert bytes(other.buf[:5]) == b"hello"
        other.buf[5] = ord("!")
        assert bytes(shm.buf[:6]) == b"hello!"
    finally:
        other.close()


def test_named_create(shm):
    name = "pp_test_" + os.urandom(4).hex()
    block = SharedMemory(name, create=True, size=10)
    try:
        assert block.name == name and shm_exists(name)
        with pytest.raises(FileExistsError):
            SharedMemory(name, create=True, size=10)
        same = SharedMemory("/" + name)  # a leading slash is accepted too
        assert same.size == 10
        same.close()
    finally:
        block.close()
        block.unlink()
    assert not shm_exists(name)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [({"create": True, "size": -1}, ValueError, "'size' must be a positive integer"),
     ({"create": True, "size": 0}, ValueError, "different from zero"),
     ({"create": True}, ValueError, "different from zero"),
     ({}, ValueError, "'name' can only be None if create=True"),
     ({"name": "pp_does_not_exist_x"}, FileNotFoundError, None)],
)
def test_errors_like_stdlib(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SharedMemory(**kwargs)
    with pytest.raises(exc, match=match):
        _std().SharedMemory(**kwargs)


def test_attach_ignores_size(shm):
    other = SharedMemory(shm.name, size=1)
    assert other.size == 64
    other.close()


def test_repr_and_pickle(shm):
    assert repr(shm) == f"SharedMemory({shm.name!r}, size=64)"
    shm.buf[0] = 9
    copy = pickle.loads(pickle.dumps(shm))
    try:
        assert copy.name == shm.name and copy.buf[0] == 9
    finally:
        copy.close()


def test_close_and_unlink():
    block = SharedMemory(create=True, size=16)
    name = block.name
    view = block.buf
    block.close()
    assert block.buf is None
    with pytest.raises(ValueError):
        view[0]  # released
    block.close()  # twice is fine
    block.unlink()
    assert not shm_exists(name)
    with pytest.raises(FileNotFoundError):
        block.unlink()
    with pytest.raises(FileNotFoundError):
        SharedMemory(name)


def test_unlink_keeps_existing_mappings():
    block = SharedMemory(create=True, size=8)
    other = SharedMemory(block.name)
    block.unlink()
    other.buf[0] = 1
    assert block.buf[0] == 1  # memory lives until the last mapping goes
    other.close()
    block.close()


def test_large_block():
    block = SharedMemory(create=True, size=50 * 1024 * 1024 + 3)
    try:
        assert block.size == 50 * 1024 * 1024 + 3
        block.buf[-1] = 7
        assert block.buf[-1] == 7
    finally:
        block.close()
        block.unlink()


def test_interop_with_stdlib_shared_memory(shm):
    shm.buf[:3] = b"abc"
    theirs = _std_attach(_std().SharedMemory, name=shm.name)
    try:
        assert bytes(theirs.buf[:3]) == b"abc"
        theirs.buf[3] = ord("d")
    finally:
        theirs.close()
    assert bytes(shm.buf[:4]) == b"abcd"


# ---------------------------------------------------------------- ShareableList

ITEMS = [1, -2**63, 2**63 - 1, 2.5, True, False, None, "", "h\u00e9llo w\u00f6rld", b"",
         b"\x01bytes", "12345678"]


@pytest.fixture
def slist():
    sl = ShareableList(ITEMS)
    yield sl
    sl.shm.close()
    sl.shm.unlink()


def test_shareable_list_round_trip(slist):
    assert list(slist) == ITEMS
    assert len(slist) == len(ITEMS)
    assert [type(x) for x in slist] == [type(x) for x in ITEMS]
    assert slist[-1] == "12345678" and slist[-len(ITEMS)] == 1
    with pytest.raises(IndexError, match="index out of range"):
        slist[len(ITEMS)]
    with pytest.raises(IndexError, match="index out of range"):
        slist[-len(ITEMS) - 1]
    assert slist.shm.name.startswith("pp_")


def test_shareable_list_attach_and_pickle(slist):
    other = ShareableList(name=slist.shm.name)
    try:
        assert list(other) == ITEMS
        other[0] = 42
        assert slist[0] == 42
    finally:
        other.shm.close()
    copy = pickle.loads(pickle.dumps(slist))
    try:
        assert list(copy) == list(slist)
    finally:
        copy.shm.close()


def test_shareable_list_assignment(slist):
    slist[0] = "abcdefg"  # 8-byte slot: up to 8 bytes fit
    slist[0] = "abcdefgh"
    assert slist[0] == "abcdefgh"
    with pytest.raises(ValueError, match="exceeds available storage"):
        slist[0] = "abcdefghi"
    slist[0] = 3.25
    assert slist[0] == 3.25
    slist[8] = "\u00e9" * 8  # the slot of "h\u00e9llo w\u00f6rld" (16 bytes)
    assert slist[8] == "\u00e9" * 8
    with pytest.raises(ValueError):
        slist[8] = "\u00e9" * 9
    slist[1] = None
    slist[2] = False
    slist[3] = b"raw"
    assert [slist[1], slist[2], slist[3]] == [None, False, b"raw"]
    slist[-1] = 7
    assert slist[-1] == 7
    with pytest.raises(IndexError, match="assignment index out of range"):
        slist[len(ITEMS)] = 1
    with pytest.raises(struct.error):
        slist[0] = 2**64  # too big for the 64-bit slot
    assert slist[0] == 3.25  # unchanged
    with pytest.raises(TypeError):
        slist[0] = [1]


def test_shareable_list_count_index_format_repr():
    sl = ShareableList([1, "a", 1, b"b", None, 2.0])
    try:
        assert sl.count(1) == 2 and sl.count("a") == 1 and sl.count("zz") == 0
        assert sl.index(None) == 4 and sl.index(2.0) == 5
        with pytest.raises(ValueError, match="not in this container"):
            sl.index("missing")
        assert sl.format == "q8sq8sxxxxxx?xd"
        assert repr(sl) == f"ShareableList([1, 'a', 1, b'b', None, 2.0], name={sl.shm.name!r})"
        assert ShareableList[int] is not None  # generic alias, like the stdlib
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_empty_and_named():
    name = "pp_sl_" + os.urandom(4).hex()
    sl = ShareableList(name=name, sequence=[])
    try:
        assert list(sl) == [] and len(sl) == 0 and sl.shm.name == name
        assert ShareableList(name=name).format == ""
    finally:
        sl.shm.close()
        sl.shm.unlink()
    empty = ShareableList()
    try:
        assert len(empty) == 0
    finally:
        empty.shm.close()
        empty.shm.unlink()


def test_shareable_list_rejects_unsupported_types():
    with pytest.raises(TypeError, match="must be int, float"):
        ShareableList([[1, 2]])


def test_shareable_list_trailing_nuls_lost_like_stdlib():
    sl = ShareableList(["a\x00", b"b\x00\x00"])
    try:
        assert list(sl) == ["a", b"b"]
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_slots_are_the_stdlibs():
    # The stdlib sizes a str slot from its len() in characters: a list made from another one
    # after 'encodés' (7 characters, 8 bytes of UTF-8) went into an 8-byte slot must get the
    # same format, not a 16-byte slot.
    std = _std()
    items = ["", "a" * 7, "a" * 8, "a" * 15, "a" * 16, "encodés", b"", b"x" * 8, 1, 2.5,
             None, True]
    lists = []
    try:
        for mod in (std, polyproc.shared_memory):
            sl = mod.ShareableList(items)
            lists.append(sl)
            sl[0] = "encodés"
            copy = mod.ShareableList(sl)
            lists.append(copy)
        std_sl, std_copy, our_sl, our_copy = lists
        assert our_sl.format == std_sl.format
        assert our_copy.format == std_copy.format == our_sl.format
        assert list(our_copy) == list(std_copy)
    finally:
        for sl in lists:
            sl.shm.close()
            sl.shm.unlink()


def test_shareable_list_non_ascii_str_not_cut_short():
    # The stdlib's slot for 'ééééé' (5 characters) is 8 bytes, less than its 10 bytes of
    # UTF-8: polyproc gives it a 16-byte slot and reads back what it stored.
    sl = ShareableList(["ééééé", "日本語のテキスト"])
    try:
        assert list(sl) == ["ééééé", "日本語のテキスト"]
        assert sl.format == "16s32s"
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_shareable_list_format_compatible_with_stdlib():
    std_shm = _std()
    ours = ShareableList(ITEMS)
    try:
        theirs = _std_attach(std_shm.ShareableList, name=ours.shm.name)
        try:
            assert list(theirs) == ITEMS
            assert theirs.format == ours.format
            theirs[0] = "std"
            theirs[3] = None
        finally:
            theirs.shm.close()
        assert ours[0] == "std" and ours[3] is None
    finally:
        ours.shm.close()
        ours.shm.unlink()
    # ... and the other way round.
    theirs = std_shm.ShareableList(ITEMS)
    try:
        mine = ShareableList(name=theirs.shm.name)
        try:
            assert list(mine) == ITEMS and mine.format == theirs.format
            mine[1] = 5
        finally:
            mine.shm.close()
        assert theirs[1] == 5
    finally:
        theirs.shm.close()
        theirs.shm.unlink()


# ---------------------------------------------------------------- children


def _child_writes(block, name, sl):
    block.buf[0] = 11
    other = SharedMemory(name)
    other.buf[1] = 22
    other.close()
    sl[0] = sl[0] + 1
    sl[1] = "from child"
    sl[2] = None


@pytest.mark.parametrize("method", METHODS)
def test_child_modifies_shared_memory_and_list(method):
    ctx = polyproc.get_context(method)
    block = SharedMemory(create=True, size=8)
    sl = ShareableList([41, "x" * 10, 1.5])
    try:
        p = ctx.Process(target=_child_writes, args=(block, block.name, sl))
        p.start()
        p.join(JOIN_TIMEOUT)
        assert p.exitcode == 0
        assert bytes(block.buf[:2]) == bytes([11, 22])
        assert list(sl) == [42, "from child", None]
        assert shm_exists(block.name)  # the child's attach did not make anyone unlink it
    finally:
        block.close()
        block.unlink()
        sl.shm.close()
        sl.shm.unlink()


def _child_creates(conn):
    block = SharedMemory(create=True, size=16)
    block.buf[:4] = b"made"
    sl = ShareableList([1, "two"])
    conn.send((block.name, sl.shm.name))
    block.close()
    sl.shm.close()


@pytest.mark.parametrize("method", METHODS)
def test_segment_created_by_child_outlives_it(method):
    ctx = polyproc.get_context(method)
    r, w = polyproc.Pipe(duplex=False)
    p = ctx.Process(target=_child_creates, args=(w,))
    p.start()
    w.close()
    assert r.poll(JOIN_TIMEOUT)
    name, list_name = r.recv()
    p.join(JOIN_TIMEOUT)
    assert p.exitcode == 0
    block = SharedMemory(name)
    sl = ShareableList(name=list_name)
    try:
        assert bytes(block.buf[:4]) == b"made"
        assert list(sl) == [1, "two"]
    finally:
        block.close()
        block.unlink()
        sl.shm.close()
        sl.shm.unlink()
    r.close()


# ---------------------------------------------------------------- differential


def _list_worker(sl, n):
    for i in range(len(sl)):
        item = sl[i]
        if isinstance(item, bool) or item is None:
            sl[i] = not item
        elif isinstance(item, (int, float)):
            sl[i] = item * n
        elif isinstance(item, str):
            sl[i] = item.upper()
        else:
            sl[i] = item[::-1]


def shareable_list_program(mp, shm_mod, method):
    """A child transforms each item of a ShareableList; the parent reads the result."""
    ctx = mp.get_context(method)
    sl = shm_mod.ShareableList([3, 1.5, "abc", b"xyz", True, None, "\u00e9t\u00e9"])
    try:
        before = [list(sl), sl.format, len(sl), sl.count(3), sl.index("abc")]
        p = ctx.Process(target=_list_worker, args=(sl, 4))
        p.start()
        p.join(JOIN_TIMEOUT)
        after = [p.exitcode, list(sl), sl.format, type(sl).__name__]
        errors = []
        for value in ("abcdefghi", b"1234567890"):
            try:
                sl[2] = value
            except ValueError as e:
                errors.append(str(e))
        return before + after + [errors]
    finally:
        sl.shm.close()
        sl.shm.unlink()


def _memory_worker(block, start):
    for i in range(start, len(block.buf), 2):
        block.buf[i] = (i * 7) % 256


def shared_memory_program(mp, shm_mod, method):
    """Two children fill the odd and even bytes of one block."""
    ctx = mp.get_context(method)
    block = shm_mod.SharedMemory(create=True, size=1000)
    try:
        procs = [ctx.Process(target=_memory_worker, args=(block, k)) for k in (0, 1)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(JOIN_TIMEOUT)
        return [[p.exitcode for p in procs], bytes(block.buf), block.size]
    finally:
        block.close()
        block.unlink()


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("program", [shareable_list_program, shared_memory_program],
                         ids=["ShareableList", "SharedMemory"])
def test_differential_against_stdlib(program, method):
    import multiprocessing

    from polyproc import shared_memory

    # Under fork the stdlib's attach-by-pickle does not happen (children inherit the object),
    # so its resource tracker sees one registration and one unlink: no warnings.
    expected = program(multiprocessing, _std(), method)
    got = program(polyproc, shared_memory, method)
    assert got == expected


# ---------------------------------------------------------------- faults


def _attach_and_wait(name, conn):
    block = SharedMemory(name)
    block.buf[0] = 99
    conn.send("attached")
    conn.recv()  # until killed


@pytest.mark.parametrize("method", METHODS)
def test_child_killed_while_attached(method):
    ctx = polyproc.get_context(method)
    block = SharedMemory(create=True, size=32)
    parent_end, child_end = polyproc.Pipe()
    try:
        p = ctx.Process(target=_attach_and_wait, args=(block.name, child_end))
        p.start()
        assert parent_end.poll(JOIN_TIMEOUT) and parent_end.recv() == "attached"
        p.kill()
        p.join(JOIN_TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
        assert block.buf[0] == 99
        assert shm_exists(block.name)  # a dead attacher takes nothing away
        again = SharedMemory(block.name)
        assert again.buf[0] == 99
        again.close()
    finally:
        child_end.close()
        parent_end.close()
        block.close()
        block.unlink()
    assert not shm_exists(block.name)


_KILLED_CREATOR = textwrap.dedent(
    """
    import os, signal, sys
    import polyproc
    from polyproc.shared_memory import SharedMemory, ShareableList

    def creator(conn):
        block = SharedMemory(create=True, size=4096)
        block.buf[:5] = b"hello"
        sl = ShareableList([1, "leak"])
        conn.send((block.name, sl.shm.name))
        conn.recv()  # until killed

    if __name__ == "__main__":
        method, parent_exit = sys.argv[1], sys.argv[2]
        ctx = polyproc.get_context(method)
        parent_end, child_end = polyproc.Pipe()
        p = ctx.Process(target=creator, args=(child_end,))
        p.start()
        if not parent_end.poll(30):
            sys.exit("no name from the child")
        names = parent_end.recv()
        print(" ".join(names), flush=True)
        p.kill()
        p.join(30)
        print("child exit code", p.exitcode, flush=True)
        if parent_exit == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("parent_exit", ["normal", "sigkill"])
@pytest.mark.parametrize("method", METHODS)
def test_killed_creator_segment_cleaned_when_tree_exits(tmp_path, method, parent_exit):
    # Output pipes stay open until the tracker (which inherits stderr) has cleaned up.
    res = run_script(tmp_path, _KILLED_CREATOR, args=(method, parent_exit))
    lines = res.stdout.splitlines()
    assert lines, f"no output; stderr:\n{res.stderr}"
    names = lines[0].split()
    assert lines[1] == f"child exit code {-signal.SIGKILL}"
    expected_rc = -signal.SIGKILL if parent_exit == "sigkill" else 0
    assert res.returncode == expected_rc, res.stderr
    for name in names:
        assert wait_gone(name), f"/dev/shm/{name} still exists; stderr:\n{res.stderr}"
        assert name in res.stderr  # the tracker's warning names what it cleaned up


_ATTACHER = textwrap.dedent(
    """
    import sys
    from polyproc.shared_memory import SharedMemory, ShareableList

    block = SharedMemory(sys.argv[1])
    block.buf[0] = 1
    sl = ShareableList(name=sys.argv[2])
    sl[0] = "seen"
    print("attached", flush=True)
    """
)


def test_attaching_process_tree_does_not_unlink(tmp_path):
    """The stdlib (<= 3.12) registered attached blocks too, so an attaching program's tracker
    unlinked them when it exited; polyproc registers only in the creator."""
    block = SharedMemory(create=True, size=8)
    sl = ShareableList(["x" * 8])
    try:
        res = run_script(tmp_path, _ATTACHER, args=(block.name, sl.shm.name))
        assert res.stdout.strip() == "attached", res.stderr
        assert block.buf[0] == 1 and sl[0] == "seen"
        assert shm_exists(block.name) and shm_exists(sl.shm.name)
        assert "leaked" not in res.stderr
    finally:
        block.close()
        block.unlink()
        sl.shm.close()
        sl.shm.unlink()


_FRESH_TREE = textwrap.dedent(
    """
    import sys
    import polyproc
    from polyproc.shared_memory import SharedMemory

    def creator(conn):
        block = SharedMemory(create=True, size=16)
        block.buf[0] = 5
        conn.send(block.name)
        block.close()

    if __name__ == "__main__":
        ctx = polyproc.get_context(sys.argv[1])
        parent_end, child_end = polyproc.Pipe()
        p = ctx.Process(target=creator, args=(child_end,))
        p.start()
        name = parent_end.recv()
        p.join(30)
        block = SharedMemory(name)  # FileNotFoundError if the child's exit unlinked it
        print(block.buf[0], flush=True)
        block.close()
        block.unlink()
    """
)


@pytest.mark.parametrize(
    "method",
    ["fork", "spawn", "forkserver"],
)
def test_segment_of_exited_child_survives_in_fresh_tree(tmp_path, method):
    """A block a child created and did not unlink lives as long as the tree, not the child."""
    res = run_script(tmp_path, _FRESH_TREE, args=(method,))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "5"
    assert "leaked" not in res.stderr


# ---------------------------------------------------------------- track= (Python 3.13's, everywhere)


def test_track_parameter_is_the_stdlibs():
    import inspect
    import sys

    track = inspect.signature(SharedMemory).parameters["track"]
    assert track.kind is inspect.Parameter.KEYWORD_ONLY and track.default is True
    if sys.version_info >= (3, 13):
        std = inspect.signature(_std().SharedMemory)
        assert list(std.parameters) == list(inspect.signature(SharedMemory).parameters)


def test_untracked_block_unlinks_and_reattaches():
    block = SharedMemory(create=True, size=16, track=False)
    try:
        other = SharedMemory(block.name, track=False)
        other.buf[0] = 7
        assert block.buf[0] == 7
        other.close()
        other.unlink()  # from the attaching side, as with a tracked block
        assert not shm_exists(block.name)
        with pytest.raises(FileNotFoundError):
            SharedMemory(block.name)
    finally:
        block.close()


_UNTRACKED_CREATOR = textwrap.dedent(
    """
    import sys
    from polyproc._resources import tracker
    from polyproc.shared_memory import SharedMemory

    block = SharedMemory(create=True, size=16, track=False)
    block.buf[0] = 9
    block.close()
    assert tracker._tracker._fd is None, "track=False started a resource tracker"
    print(block.name, flush=True)
    """
)


def test_untracked_block_outlives_its_creators_tree(tmp_path):
    res = run_script(tmp_path, _UNTRACKED_CREATOR)
    assert res.returncode == 0, res.stderr
    name = res.stdout.strip()
    try:
        assert shm_exists(name), "the creator's exit unlinked a track=False block"
        block = SharedMemory(name)
        assert block.buf[0] == 9
        block.close()
        assert res.stderr == ""  # no tracker, no warning
    finally:
        SharedMemory(name).unlink()


_UNTRACKED_ATTACHER = textwrap.dedent(
    """
    import sys
    from polyproc.shared_memory import SharedMemory

    mem = SharedMemory(create=False, name=sys.argv[1], track=False)
    mem.close()
    """
)


def test_untracked_attach_from_another_program(tmp_path):
    # CPython's test_shared_memory_untracking (gh-82300).
    block = SharedMemory(create=True, size=10)
    try:
        res = run_script(tmp_path, _UNTRACKED_ATTACHER, args=(block.name,))
        assert res.returncode == 0, res.stderr
        assert "tracker" not in res.stderr
        SharedMemory(block.name).close()  # still there
    finally:
        block.close()
        block.unlink()
