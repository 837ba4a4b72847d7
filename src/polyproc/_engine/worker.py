"""The loop a pool worker process runs: receive a batch, run it, send the outcomes back.

A batch message is ``(batch_id, new_funcs, fid, star, items, precise)``:
``new_funcs`` maps function ids to pickled functions the worker has not seen yet; when ``fid``
is ``MIXED`` each item is ``(fid, args, kwargs)``, otherwise every item is the argument (or,
with ``star``, the argument tuple) of ``funcs[fid]``. The reply is
``(batch_id, values, errors, elapsed_ns)`` with ``errors`` None or ``{position: exception}``.

The worker records what it runs in its slot of a shared ``Slots`` table (batch id, position,
start time), so the engine can tell which task a dead or overdue worker was running.
"""

from __future__ import annotations

import itertools
import os
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import wire
from .slots import Slots

MIXED = wire.MIXED
STOP = None


def _with_traceback(exc: BaseException) -> Any:
    """``exc`` as an ``errors._ExceptionWithTraceback``, to send to the parent.

    Imported on the first error only: `errors` needs concurrent.futures (and with it
    logging), which would cost every spawn and forkserver worker's start several ms.
    """
    from .errors import _ExceptionWithTraceback

    return _ExceptionWithTraceback(exc)


def _watch_parent(sentinel: int) -> None:
    from .._spawn._popen import wait_fd

    wait_fd(sentinel, None)
    os._exit(1)  # the pool's owner is gone: nobody can use our results


def main(sock: Any, slots: Slots, slot_index: int, initializer: Any, initargs: tuple,
         maxtasks: int | None, close_fds: tuple[int, ...] = ()) -> None:
    """Worker entry point (the target of the worker Process)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    from .. import process

    parent = process.parent_process()
    sentinel = getattr(parent, "_sentinel", None)
    if sentinel is not None:
        threading.Thread(target=_watch_parent, args=(sentinel,), daemon=True,
                         name="polyproc-parent-watch").start()
    slot = slots.view(slot_index)
    slot[3] = os.getpid()
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as e:
            _send(sock, ("init", check_errors({0: _with_traceback(e)}, wire.dumps)[0]))
            return
    funcs: dict[int, Any] = {}
    done = 0
    recv = wire.recv
    loads = wire.loads
    data: bytearray | None  # set to None after each batch, to let go of it early
    values: list[Any] | None
    while True:
        try:
            data, fds = recv(sock)
        except (EOFError, OSError):
            return
        except MemoryError as e:  # the frame does not fit here: the stream is lost with it
            _unloadable(sock, e)
            return
        try:
            msg = loads(data, fds)
        except Exception as e:
            # Its arguments cannot be rebuilt here (out of memory, a __setstate__ raising, a
            # class this process cannot import): that is the outcome of its tasks, not the
            # end of the worker as one that never started. The functions the message carried
            # are lost with it, so a new worker takes over the batches sent behind it.
            data = None
            _unloadable(sock, e)
            return
        if msg is STOP:
            return
        batch_id, new_funcs, fid, star, items, precise = msg
        for k, blob in new_funcs.items():
            if blob is None:
                funcs.pop(k, None)  # no job of the pool uses it any more
            else:
                funcs[k] = pickle.loads(blob)
        slot[0] = batch_id
        slot[1] = -1
        t0 = time.monotonic_ns()
        slot[2] = t0
        values, errors = run_batch(funcs, fid, star, items, precise, slot)
        elapsed = time.monotonic_ns() - t0
        # The row keeps naming the batch while its outcomes are sent (position -1: no task
        # runs, so no timeout applies): a death now re-runs its tasks one by one to find the
        # culprit instead of counting as a worker that never ran anything.
        slot[1] = -1
        _send_result(sock, batch_id, values, errors, elapsed)
        slot[0] = 0
        done += len(items)
        # Let go of this batch's arguments and outcomes now, not when the next one comes.
        data = msg = items = values = errors = new_funcs = None
        if maxtasks and done >= maxtasks:
            return


def run_batch(funcs: dict, fid: int, star: bool, items: Sequence[Any], precise: bool, slot: Any,
              wrap: Any = None) -> tuple[list, dict | None]:
    """Run one batch: ``(values, errors)``, errors ``{position: wrap(exception)}`` or None.

    Every task gets an outcome: whatever it raises, ``SystemExit`` included (as the stdlib's
    executor does), is its outcome and the worker goes on. ``wrap`` prepares an exception
    for the trip to the caller (default: with its formatted traceback).
    """
    if wrap is None:
        wrap = _with_traceback
    if fid == MIXED:
        return _run_mixed(funcs, items, slot, wrap)
    if precise:
        return _run_precise(funcs[fid], star, items, slot, wrap)
    return _run_fast(funcs[fid], star, items, wrap)


def _run_fast(func: Any, star: bool, items: Sequence[Any], wrap: Any) -> tuple[list, dict | None]:
    """Run a batch with C-level iteration; exceptions are caught without losing position."""
    values: list = []
    errors = None
    it = iter(items)
    mapper = itertools.starmap if star else map
    while True:
        try:
            values.extend(mapper(func, it))
            return values, errors
        except BaseException as e:
            if errors is None:
                errors = {}
            errors[len(values)] = wrap(e)
            values.append(None)


def _run_precise(func: Any, star: bool, items: Sequence[Any], slot: Any,
                 wrap: Any) -> tuple[list, dict | None]:
    """Run a batch recording each task's position and start time (for timeouts and blame)."""
    values: list = []
    errors = None
    now = time.monotonic_ns
    for pos, args in enumerate(items):
        slot[2] = now()
        slot[1] = pos
        try:
            values.append(func(*args) if star else func(args))
        except BaseException as e:
            if errors is None:
                errors = {}
            errors[pos] = wrap(e)
            values.append(None)
    return values, errors


def _run_mixed(funcs: dict, items: Sequence[Any], slot: Any, wrap: Any) -> tuple[list, dict | None]:
    values: list = []
    errors = None
    now = time.monotonic_ns
    for pos, (fid, args, kwargs) in enumerate(items):
        slot[2] = now()
        slot[1] = pos
        try:
            values.append(funcs[fid](*args, **kwargs))
        except BaseException as e:
            if errors is None:
                errors = {}
            errors[pos] = wrap(e)
            values.append(None)
    return values, errors


def _unloadable(sock: Any, exc: BaseException) -> None:
    """Tell the parent that the oldest batch it sent cannot be unpickled here, and why."""
    _note(exc, f"(raised in worker pid {os.getpid()} while unpickling the task's arguments)")
    try:
        _send(sock, ("unloadable", check_errors({0: _with_traceback(exc)}, wire.dumps)[0]))
    except (MemoryError, OSError):
        pass  # the parent sees the worker die


def _send(sock: Any, msg: Any) -> None:
    payload, fds = wire.dumps(msg)
    wire.send(sock, payload, fds)


def _send_result(sock: Any, batch_id: int, values: list, errors: dict | None,
                 elapsed: int) -> None:
    if errors:
        errors = check_errors(errors, wire.dumps)
    try:
        payload, fds = wire.dumps((batch_id, values, errors, elapsed))
    except BaseException:
        values, errors = isolate_unpicklable(values, errors, wire.dumps)
        try:
            payload, fds = wire.dumps((batch_id, values, errors, elapsed))
        except BaseException as e:  # each part pickles alone but not together: fail them all
            from .errors import MaybeEncodingError

            err = _with_traceback(MaybeEncodingError(
                f"the outcomes of this batch cannot be pickled together ({safe_str(e)})",
                safe_repr(e), f"<the outcomes of {len(values)} task(s)>"))
            payload, fds = wire.dumps((batch_id, [None] * len(values),
                                       dict.fromkeys(range(len(values)), err), elapsed))
    wire.send(sock, payload, fds)


def _pickles(obj: Any, dumps: Any) -> BaseException | None:
    """None if ``obj`` pickles with ``dumps`` (fds it makes are closed), else the error."""
    try:
        out = dumps(obj)
    except BaseException as e:  # RecursionError, a __reduce__ raising SystemExit, ...
        return e
    if isinstance(out, tuple):
        for fd in out[1]:
            os.close(fd)
    return None


def isolate_unpicklable(values: list, errors: dict | None, dumps: Any,
                        peer: str = "parent") -> tuple[list, dict]:
    """Replace each value that cannot be pickled by a ``MaybeEncodingError`` of its own
    (an ``UnpicklableError``, the stdlib Pool's class for it).

    Called when a batch's outcomes do not pickle as a whole; ``errors`` (already passed
    through ``check_errors``) gains one entry per such value. A ``SystemExit`` (or other
    non-``Exception``) raised while pickling is that task's outcome itself, as with the
    stdlib's executor (and as when the task raises it).
    """
    from .errors import MaybeEncodingError

    errors = dict(errors or {})
    for pos, value in enumerate(values):
        e = _pickles(value, dumps)
        if e is None:
            continue
        values[pos] = None
        if not isinstance(e, Exception) and _pickles(e, dumps) is None:
            _note(e, f"(raised while pickling the result of this task to send it to the {peer})")
            errors[pos] = _with_traceback(e)
            continue
        what = safe_repr(value)
        errors[pos] = _with_traceback(MaybeEncodingError(
            f"the result {what} cannot be pickled to send it to the {peer}: "
            f"{type(e).__name__}: {safe_str(e)}", safe_repr(e), what))
    return values, errors


def _note(exc: BaseException, note: str) -> None:
    try:
        exc.add_note(note)
    except BaseException:
        pass


def check_errors(errors: dict, dumps: Any, peer: str = "parent") -> dict:
    """Replace each task exception that cannot make the trip to ``peer`` by one that can.

    One that cannot be pickled becomes a ``MaybeEncodingError`` (an ``UnpicklableError``, a
    ``PicklingError``); one that pickles but cannot be rebuilt (e.g. its ``__init__`` takes
    other arguments than it passes on) a ``ResultUnpicklingError`` (a ``BrokenProcessPool``,
    as the stdlib's executor reports it). Both name the original exception and carry its traceback. Nothing here
    calls a ``repr``/``str`` that could raise or recurse without bound.
    """
    for pos, err in list(errors.items()):
        try:
            blob = pickle.dumps(err, 5)
        except BaseException as e:
            if _pickles(err, dumps) is None:
                continue  # the fallback pickler (cloudpickle) can, and so can the peer
            problem, pickled = e, False
        else:
            try:
                pickle.loads(blob)
                continue
            except BaseException as e:
                problem, pickled = e, True
        exc = getattr(err, "exc", err)
        what = (f"the task raised {_type_name(exc)}: {safe_str(exc)}, which cannot be "
                f"{'unpickled in' if pickled else 'pickled to send it to'} the {peer} "
                f"({_type_name(problem)}: {safe_str(problem)})")
        tb = getattr(err, "tb", "")
        if pickled:
            from .broken import ResultUnpicklingError

            new: BaseException = ResultUnpicklingError(
                f"{what}; make the exception class picklable (e.g. pass every __init__ "
                f"argument on to super().__init__). Its traceback:\n{tb}")
        else:
            from .errors import MaybeEncodingError

            new = MaybeEncodingError(f"{what}. Its traceback:\n{tb}", safe_repr(problem),
                                     safe_repr(exc))
        errors[pos] = _with_traceback(new)
    return errors


def safe_repr(obj: Any, limit: int = 200) -> str:
    """A short repr of ``obj`` that cannot raise (a failing ``repr`` is described)."""
    try:
        import reprlib

        r = reprlib.Repr()
        r.maxstring = r.maxother = limit
        text = r.repr(obj)
    except BaseException:
        return f"<{_type_name(obj)} object (its repr() failed)>"
    return text if len(text) <= limit else text[:limit] + "..."


def safe_str(obj: Any, limit: int = 500) -> str:
    """``str(obj)`` cut to ``limit``, or a description if ``str`` raises."""
    try:
        text = str(obj)
    except BaseException:
        return f"<{_type_name(obj)} object (its str() failed)>"
    return text if len(text) <= limit else text[:limit] + "..."


def _type_name(obj: Any) -> str:
    try:
        return type(obj).__qualname__
    except BaseException:
        return "unknown"
