"""Named shared memory: ``SharedMemory`` blocks and ``ShareableList``.

The API of ``multiprocessing.shared_memory``. A block is a POSIX shared-memory object
(``shm_open``) mapped with ``mmap``; generated names start with ``/pp_`` (``/dev/shm/pp_...``
on Linux).

Cleanup: the process that *creates* a block registers its name with the process tree's
resource tracker, and ``unlink()`` unregisters it; the tracker unlinks blocks still registered
once every process of the tree has exited, however they exited. Unlike the stdlib (up to
3.12), attaching to a block by name does **not** register it: the stdlib's double registration
made the tracker of an attaching process unlink blocks that others were still using.
``track=False`` (Python 3.13's parameter, on every version) creates a block that no tracker
knows of: only an ``unlink()`` destroys it.
"""

from __future__ import annotations

import _posixshmem
import mmap
import os
import secrets
import struct
import types

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

__all__ = ["SharedMemory", "ShareableList"]

_O_CREX = os.O_CREAT | os.O_EXCL
_NAME_PREFIX = "/pp_"
_NAME_HEX = 12  # "/pp_" + 12 hex digits = 16 characters (macOS allows 31)
_MODE = 0o600


def _make_name() -> str:
    return _NAME_PREFIX + secrets.token_hex(_NAME_HEX // 2)


def _tracker() -> Any:
    from ._resources import tracker

    return tracker


def _tracker_running() -> bool:
    """Whether this process already talks to a tracker (only then can a name be registered)."""
    t = _tracker()
    inner = getattr(t, "_tracker", None)
    return inner is None or getattr(inner, "_fd", 0) is not None


class SharedMemory:
    """A block of named shared memory.

    ``SharedMemory(create=True, size=n)`` makes a new block of ``n`` bytes with a generated
    name (or ``name`` if given; ``FileExistsError`` if it exists); ``SharedMemory(name)``
    attaches to an existing one (``FileNotFoundError`` if there is none). ``buf`` is a
    memoryview of its bytes. ``close()`` unmaps it in this process; ``unlink()`` (called once,
    by any process) destroys it when the last process closes it.

    ``track`` (keyword only): with True (the default) a block this process creates is
    registered with the resource tracker, which unlinks it if the process tree ends without
    ``unlink()``; with False nothing is registered (nor a tracker started), and the block
    lives until some process calls ``unlink()`` or the machine restarts. Attaching registers
    nothing either way (see the module's docstring).
    """

    _name: str | None = None
    _mmap: mmap.mmap | None = None
    _buf: memoryview | None = None
    _size = 0

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0, *,
                 track: bool = True) -> None:
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        flags = os.O_RDWR
        if create:
            flags |= _O_CREX
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
        if name is None and not create:
            raise ValueError("'name' can only be None if create=True")
        self._track = track = bool(track)
        if create and track:
            _tracker().ensure_running()  # start it first: no window where the name is untracked
        if name is None:
            while True:
                name = _make_name()
                try:
                    fd = _posixshmem.shm_open(name, flags, mode=_MODE)
                except FileExistsError:
                    continue
                break
        else:
            if not name.startswith("/"):
                name = "/" + name
            fd = _posixshmem.shm_open(name, flags, mode=_MODE)
        self._name = name
        try:
            if create:
                if track:
                    _tracker().register(name, "shared_memory")
                    self._registered = True
                from ._resources import space

                space.check_room(fd, size, "a shared memory block")
                os.ftruncate(fd, size)
            size = os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, size)  # ValueError for an empty block, like the stdlib
        except BaseException:
            if create:
                self.unlink()
            raise
        finally:
            os.close(fd)  # the mapping stays valid; no need to hold an fd per block
        self._size = size
        self._buf = memoryview(self._mmap)

    _registered = False
    _track = True

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, BufferError):
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.name, False, self.size)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.name!r}, size={self.size})"

    @property
    def buf(self) -> memoryview | None:
        """A memoryview of the block's bytes (None once closed)."""
        return self._buf

    @property
    def name(self) -> str:
        """The block's unique name (without the leading ``/``): pass it to attach."""
        name = self._name or ""
        return name[1:] if name.startswith("/") else name

    @property
    def size(self) -> int:
        """The block's size in bytes."""
        return self._size

    def close(self) -> None:
        """Unmap the block in this process (it stays for others until ``unlink()``)."""
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        """Destroy the block's name (once, from any process); memory goes when all close.

        The tree's tracker forgets the name too if this process talks to one, whatever
        ``track`` says: the block is gone, there is nothing left to clean up (``track=False``
        starts no tracker).
        """
        if self._name:
            _posixshmem.shm_unlink(self._name)
            if self._registered or _tracker_running():
                _tracker().unregister(self._name, "shared_memory")
                self._registered = False


# ---------------------------------------------------------------- ShareableList

_ENCODING = "utf8"
_ALIGN = 8

# Segment layout (the stdlib's, so that either implementation reads the other's lists):
#   q                   number of items n
#   q * (n + 1)         offsets of each item's slot in the data area (cumulative; last = end)
#   data                each item packed in its slot (8 bytes, or a multiple of 8 for str/bytes:
#                       the next one above len(item), or above its UTF-8 length if longer)
#   8s * n              each item's struct format, NUL padded
#   b * n               how to turn each unpacked value back: 0 as is, 1 str, 2 bytes, 3 None
_FORMATS: dict[type, str] = {
    int: "q",
    float: "d",
    bool: "xxxxxxx?",
    type(None): "xxxxxx?x",
}
_AS_IS, _STR, _BYTES, _NONE = 0, 1, 2, 3


def _back(code: int, value: Any) -> Any:
    if code == _STR:
        return value.rstrip(b"\x00").decode(_ENCODING)
    if code == _BYTES:
        return value.rstrip(b"\x00")
    if code == _NONE:
        return None
    return value


def _code_of(value: Any) -> int:
    if isinstance(value, str):
        return _STR
    if isinstance(value, bytes):
        return _BYTES
    if value is None:
        return _NONE
    return _AS_IS


def _encoded(value: Any) -> Any:
    return value.encode(_ENCODING) if isinstance(value, str) else value


def _format_of(value: Any) -> str:
    if isinstance(value, (str, bytes)):
        # The stdlib's slot: the next multiple of 8 above the item's len() (characters for a
        # str), so the lists and their ``format`` are the same. A str whose UTF-8 is longer
        # than that (non-ASCII text) would be cut short there: it gets a slot above its
        # encoded length instead.
        slot = _ALIGN * (len(value) // _ALIGN + 1)
        n = len(_encoded(value))
        if n > slot:
            slot = _ALIGN * (n // _ALIGN + 1)
        return f"{slot}s"
    try:
        return _FORMATS[type(value)]
    except KeyError:
        raise TypeError(
            f"ShareableList items must be int, float, bool, str, bytes or None, "
            f"not {type(value).__name__}"
        ) from None


def _slot_size(fmt: str) -> int:
    return int(fmt[:-1]) if fmt.endswith("s") else _ALIGN


class ShareableList:
    """A fixed-length list of int, float, bool, str, bytes and None in a SharedMemory block.

    ``ShareableList(sequence)`` creates a block holding ``sequence``; ``ShareableList(name=n)``
    attaches to an existing list. Items can be replaced but the list can't grow or shrink; a
    str or bytes item can be replaced only by one that fits in its slot (``ValueError``
    otherwise). As in the stdlib, trailing NUL bytes of str and bytes items are lost.
    The block is ``shm``: call ``shm.unlink()`` (once) to destroy it.
    """

    def __init__(self, sequence: Iterable[Any] | None = None, *, name: str | None = None) -> None:
        if name is None or sequence is not None:
            items = list(sequence or ())
            formats = [_format_of(item) for item in items]
            self._list_len = len(items)
            offsets = [0]
            for fmt in formats:
                offsets.append(offsets[-1] + _slot_size(fmt))
            self._allocated_offsets = offsets
            size = struct.calcsize(
                "q" + self._format_size_metainfo + "".join(formats)
                + self._format_packing_metainfo + self._format_back_transform_codes
            )
            self.shm = SharedMemory(name, create=True, size=size)
            buf = self._buf
            struct.pack_into("q" + self._format_size_metainfo, buf, 0, self._list_len, *offsets)
            struct.pack_into("".join(formats), buf, self._offset_data_start,
                             *(_encoded(item) for item in items))
            struct.pack_into(self._format_packing_metainfo, buf, self._offset_packing_formats,
                             *(fmt.encode(_ENCODING) for fmt in formats))
            struct.pack_into(self._format_back_transform_codes, buf,
                             self._offset_back_transform_codes, *map(_code_of, items))
        else:
            self.shm = SharedMemory(name)
            self._list_len = struct.unpack_from("q", self._buf, 0)[0]
            self._allocated_offsets = list(
                struct.unpack_from(self._format_size_metainfo, self._buf, _ALIGN)
            )

    # -- layout
    @property
    def _buf(self) -> memoryview:
        # The block's bytes. None once the block is closed: struct then refuses it (TypeError),
        # as the stdlib's ShareableList does.
        return self.shm.buf  # type: ignore[return-value]

    @property
    def _format_size_metainfo(self) -> str:
        return "q" * (self._list_len + 1)

    @property
    def _format_packing_metainfo(self) -> str:
        return "8s" * self._list_len

    @property
    def _format_back_transform_codes(self) -> str:
        return "b" * self._list_len

    @property
    def _offset_data_start(self) -> int:
        return (self._list_len + 2) * _ALIGN

    @property
    def _offset_packing_formats(self) -> int:
        return self._offset_data_start + self._allocated_offsets[-1]

    @property
    def _offset_back_transform_codes(self) -> int:
        return self._offset_packing_formats + self._list_len * _ALIGN

    def _position(self, position: int, error: str) -> int:
        position = position.__index__()
        if position < 0:
            position += self._list_len
        if not 0 <= position < self._list_len:
            raise IndexError(error)
        return position

    def _get_packing_format(self, position: int) -> str:
        raw = struct.unpack_from("8s", self._buf,
                                 self._offset_packing_formats + position * _ALIGN)[0]
        return raw.rstrip(b"\x00").decode(_ENCODING)

    def _get_back_transform(self, position: int) -> int:
        return struct.unpack_from("b", self._buf,
                                  self._offset_back_transform_codes + position)[0]

    def _set_packing_format_and_transform(self, position: int, fmt: str, value: Any) -> None:
        struct.pack_into("8s", self._buf, self._offset_packing_formats + position * _ALIGN,
                         fmt.encode(_ENCODING))
        struct.pack_into("b", self._buf, self._offset_back_transform_codes + position,
                         _code_of(value))

    # -- list protocol
    def __getitem__(self, position: int) -> Any:
        position = self._position(position, "index out of range")
        offset = self._offset_data_start + self._allocated_offsets[position]
        (value,) = struct.unpack_from(self._get_packing_format(position), self._buf, offset)
        return _back(self._get_back_transform(position), value)

    def __setitem__(self, position: int, value: Any) -> None:
        position = self._position(position, "assignment index out of range")
        start = self._allocated_offsets[position]
        if isinstance(value, (str, bytes)):
            data = _encoded(value)
            room = self._allocated_offsets[position + 1] - start
            if len(data) > room:
                raise ValueError("bytes/str item exceeds available storage")
            fmt = f"{room}s"
        else:
            fmt = _format_of(value)
            data = value
        # Pack aside first: a value struct refuses (an int out of range) leaves the item as it was.
        packed = struct.pack(fmt, data)
        offset = self._offset_data_start + start
        self._buf[offset:offset + len(packed)] = packed
        self._set_packing_format_and_transform(position, fmt, value)

    def __len__(self) -> int:
        return struct.unpack_from("q", self._buf, 0)[0]

    def __iter__(self) -> Iterator[Any]:
        for i in range(self._list_len):
            yield self[i]

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach_list, (self.__class__, self.shm.name)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The struct format of all the items, concatenated."""
        return "".join(self._get_packing_format(i) for i in range(self._list_len))

    def count(self, value: Any) -> int:
        """The number of items equal to ``value``."""
        return sum(value == item for item in self)

    def index(self, value: Any) -> int:
        """The position of the first item equal to ``value`` (ValueError if none)."""
        for position, item in enumerate(self):
            if value == item:
                return position
        raise ValueError(f"{value!r} not in this container")

    __class_getitem__: Any = classmethod(types.GenericAlias)


def _attach_list(cls: type[ShareableList], name: str) -> ShareableList:
    return cls(name=name)
