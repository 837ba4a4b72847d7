"""The code Dask workers run for a polyproc pool: one Dask task per batch.

``run_batch`` is the Dask task: it unpickles a batch message, keeps each pool's functions
and initializer state in a per-pool ``Session`` of this worker process, runs the batch with
the process workers' loop (``_engine/worker.py``) and returns its reply as bytes. The driver
(``driver.py``, on the client) interprets the replies. This module imports nothing of the
client side, so a Dask worker loads only it, the pickling helpers and the worker loop.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import threading
import time
import types
from typing import Any

from ..._engine import worker as _worker
from ..._engine.errors import _ExceptionWithTraceback
from .pickling import RefUnpickler, dumps

_SESSIONS: collections.OrderedDict[str, Session] = collections.OrderedDict()
_SESSIONS_LOCK = threading.Lock()
_MAX_SESSIONS = 64


class Session:
    """What one pool left in this worker process: its functions and initializer state."""

    __slots__ = ("funcs", "lock", "initialized", "init_error", "namespaces")

    def __init__(self) -> None:
        self.funcs: dict[int, Any] = {}
        self.lock = threading.Lock()
        self.initialized = False
        self.init_error: Any = None
        self.namespaces: dict[str, dict[str, Any]] = {}  # module name -> shared globals

    def adopt(self, obj: Any) -> Any:
        """Give a function pickled by value the session's namespace of its module.

        cloudpickle gives each function pickled by value (those of the client's
        ``__main__``) its own copy of the globals it uses, so an initializer that sets a
        global would set it in a copy no task sees. Here every such function of one module
        shares one namespace per pool and worker process, as the functions of an imported
        module share its globals (what spawned local workers get by re-importing main).
        """
        if not isinstance(obj, types.FunctionType):
            return obj
        module = sys.modules.get(obj.__module__)
        if module is not None and getattr(module, "__dict__", None) is obj.__globals__:
            return obj  # imported normally: shares its module's globals already
        ns = self.namespaces.setdefault(obj.__module__, {})
        if obj.__globals__ is ns:
            return obj
        new = _rebind(obj, ns)
        changed = True
        while changed:  # by-value helpers reached through the globals share ns too
            changed = False
            for name, value in list(ns.items()):
                if (isinstance(value, types.FunctionType) and value.__globals__ is not ns
                        and value.__module__ == obj.__module__
                        and value.__globals__ is not getattr(module, "__dict__", None)):
                    ns[name] = _rebind(value, ns)
                    changed = True
        fname = obj.__name__
        if ns.get(fname) is obj:
            ns[fname] = new
        return new


def _rebind(func: types.FunctionType, ns: dict[str, Any]) -> types.FunctionType:
    for name, value in func.__globals__.items():
        ns.setdefault(name, value)
    new = types.FunctionType(func.__code__, ns, func.__name__, func.__defaults__,
                             func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__module__ = func.__module__
    new.__doc__ = func.__doc__
    new.__annotations__ = func.__annotations__
    new.__dict__.update(func.__dict__)
    return new


def run_batch(token: str, payload: bytes, refs: dict[str, Any] | None = None) -> bytes:
    """The Dask task of one batch (runs on a Dask worker); returns a pickled reply.

    Replies: ``("ok", values, errors, elapsed_ns, pid)``; ``("missing", pid)`` (this process
    lacks the pool's session or a function: send them); ``("init-error", exc, pid)``;
    ``("load-error", exc, pid)`` (the batch could not be unpickled here);
    ``("timeout", position, pid)``; ``("lost", position or None, pid, exitcode)`` (a task
    raised SystemExit/KeyboardInterrupt, which would end a local worker process).
    """
    pid = os.getpid()
    try:
        if refs:
            msg = RefUnpickler(io.BytesIO(payload), refs).load()
        else:
            msg = pickle.loads(payload)
        fresh, init, (batch_id, new_funcs, fid, star, items, precise), timeouts = msg
    except BaseException as e:
        return _reply(("load-error", _ExceptionWithTraceback(e), pid))
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(token)
        if session is None:
            if not fresh:
                return _reply(("missing", pid))
            session = _SESSIONS[token] = Session()
            while len(_SESSIONS) > _MAX_SESSIONS:
                _SESSIONS.popitem(last=False)
        else:
            _SESSIONS.move_to_end(token)
    with session.lock:
        if not session.initialized:
            if not fresh:
                return _reply(("missing", pid))
            session.initialized = True
            if init is not None:
                try:
                    initializer, initargs = pickle.loads(init)
                    session.adopt(initializer)(*initargs)
                except BaseException as e:
                    session.init_error = _ExceptionWithTraceback(e)
        if session.init_error is not None:
            return _reply(("init-error", session.init_error, pid))
        funcs = session.funcs
        try:
            for k, blob in new_funcs.items():
                if blob is None:
                    funcs.pop(k, None)
                elif k not in funcs:
                    funcs[k] = session.adopt(pickle.loads(blob))
        except BaseException as e:
            return _reply(("load-error", _ExceptionWithTraceback(e), pid))
    needed = {fid} if fid != _worker.MIXED else {item[0] for item in items}
    if not needed.issubset(funcs):
        return _reply(("missing", pid))

    slot = [batch_id, -1, 0, pid]
    t0 = time.monotonic_ns()
    try:
        if timeouts is not None:
            outcome = _run_timed(funcs, fid, star, items, timeouts, slot)
            if outcome[0] == "timeout":
                return _reply(("timeout", outcome[1], pid))
            values, errors = outcome[1]
        else:
            values, errors = _worker.run_batch(funcs, fid, star, items, precise, slot)
    except BaseException as e:  # SystemExit / KeyboardInterrupt out of a task
        code = None
        if isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return _reply(("lost", slot[1] if slot[1] >= 0 else None, pid, code))
    elapsed = time.monotonic_ns() - t0
    return _reply_values(values, errors, elapsed, pid)


def _run_timed(funcs: dict, fid: int, star: bool, items: list, timeouts: Any,
               slot: list) -> tuple[str, Any]:
    """Run a batch in a helper thread; return ('timeout', pos) as soon as a task is overdue."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["r"] = _worker.run_batch(funcs, fid, star, items, True, slot)
        except BaseException as e:
            box["e"] = e
        finally:
            done.set()

    threading.Thread(target=target, daemon=True, name="polyproc-timed-batch").start()
    per_task = isinstance(timeouts, list)
    while not done.wait(0.01):
        pos = slot[1]
        if pos < 0:
            continue
        limit = timeouts[pos] if per_task else timeouts
        if limit is None:
            continue
        started = slot[2]
        if time.monotonic_ns() - started > limit * 1e9 and slot[1] == pos:
            return ("timeout", pos)
    if "e" in box:
        raise box["e"]
    return ("done", box["r"])


def _reply(msg: tuple) -> bytes:
    try:
        return pickle.dumps(msg, 5)
    except Exception:
        return dumps(msg)


def _reply_values(values: list, errors: dict | None, elapsed: int, pid: int) -> bytes:
    if errors:
        errors = _worker.check_errors(errors, dumps, "client")
    msg = ("ok", values, errors, elapsed, pid)
    try:
        return pickle.dumps(msg, 5)
    except BaseException:
        pass
    try:
        return dumps(msg)
    except BaseException:
        pass
    values, errors = _worker.isolate_unpicklable(values, errors, dumps, "client")
    return dumps(("ok", values, errors, elapsed, pid))


def forget_session(token: str) -> None:
    with _SESSIONS_LOCK:
        _SESSIONS.pop(token, None)
