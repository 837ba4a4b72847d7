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
from typing import Any

from . import wire
from .slots import Slots

MIXED = -1
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
            _send(sock, ("init", _with_traceback(e)))
            return
    funcs: dict[int, Any] = {}
    done = 0
    recv = wire.recv
    loads = wire.loads
    while True:
        try:
            data, fds = recv(sock)
        except (EOFError, OSError):
            return
        msg = loads(data, fds)
        if msg is STOP:
            return
        batch_id, new_funcs, fid, star, items, precise = msg
        for k, blob in new_funcs.items():
            funcs[k] = pickle.loads(blob)
        slot[0] = batch_id
        slot[1] = -1
        t0 = time.monotonic_ns()
        slot[2] = t0
        if fid == MIXED:
            values, errors = _run_mixed(funcs, items, slot)
        elif precise:
            values, errors = _run_precise(funcs[fid], star, items, slot)
        else:
            values, errors = _run_fast(funcs[fid], star, items)
        elapsed = time.monotonic_ns() - t0
        slot[0] = 0
        _send_result(sock, batch_id, values, errors, elapsed)
        done += len(items)
        if maxtasks and done >= maxtasks:
            return


def _run_fast(func: Any, star: bool, items: list) -> tuple[list, dict | None]:
    """Run a batch with C-level iteration; exceptions are caught without losing position."""
    values: list = []
    errors = None
    it = iter(items)
    mapper = itertools.starmap if star else map
    while True:
        try:
            values.extend(mapper(func, it))
            return values, errors
        except Exception as e:
            if errors is None:
                errors = {}
            errors[len(values)] = _with_traceback(e)
            values.append(None)


def _run_precise(func: Any, star: bool, items: list, slot: Any) -> tuple[list, dict | None]:
    """Run a batch recording each task's position and start time (for timeouts and blame)."""
    values: list = []
    errors = None
    now = time.monotonic_ns
    for pos, args in enumerate(items):
        slot[2] = now()
        slot[1] = pos
        try:
            values.append(func(*args) if star else func(args))
        except Exception as e:
            if errors is None:
                errors = {}
            errors[pos] = _with_traceback(e)
            values.append(None)
    return values, errors


def _run_mixed(funcs: dict, items: list, slot: Any) -> tuple[list, dict | None]:
    values: list = []
    errors = None
    now = time.monotonic_ns
    for pos, (fid, args, kwargs) in enumerate(items):
        slot[2] = now()
        slot[1] = pos
        try:
            values.append(funcs[fid](*args, **kwargs))
        except Exception as e:
            if errors is None:
                errors = {}
            errors[pos] = _with_traceback(e)
            values.append(None)
    return values, errors


def _send(sock: Any, msg: Any) -> None:
    payload, fds = wire.dumps(msg)
    wire.send(sock, payload, fds)


def _send_result(sock: Any, batch_id: int, values: list, errors: dict | None,
                 elapsed: int) -> None:
    try:
        payload, fds = wire.dumps((batch_id, values, errors, elapsed))
    except Exception:
        values, errors = _isolate_unpicklable(values, errors)
        payload, fds = wire.dumps((batch_id, values, errors, elapsed))
    wire.send(sock, payload, fds)


def _isolate_unpicklable(values: list, errors: dict | None) -> tuple[list, dict]:
    """Replace each value or error that cannot be pickled by an UnpicklableError."""
    errors = dict(errors or {})
    for pos, value in enumerate(values):
        try:
            for fd in wire.dumps(value)[1]:
                os.close(fd)  # only testing that it pickles
        except Exception as e:
            from .errors import UnpicklableError

            values[pos] = None
            errors[pos] = _with_traceback(UnpicklableError(
                f"the result {value!r:.200} cannot be pickled to send it to the parent: {e}"))
    for pos, err in list(errors.items()):
        try:
            pickle.dumps(err)
        except Exception as e:
            from .errors import UnpicklableError

            exc = err.exc
            errors[pos] = _with_traceback(UnpicklableError(
                f"the task raised {type(exc).__name__}: {exc!s:.500}, which cannot be "
                f"pickled to send it to the parent ({e}); its traceback:\n{err.tb}"))
    return values, errors
