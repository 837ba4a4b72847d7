"""The Dask backend: a pool's batches run as tasks on a Dask distributed cluster.

``polyproc.get_context('dask', address=None, **options)`` returns a ``DaskContext``; its
``Pool()`` and ``ProcessPoolExecutor()`` are polyproc's own Pool and executor (same methods,
same scheduler: adaptive chunking, retries, timeouts, one outcome per task) with this backend
in place of the local worker processes. See docs/dask.md.

How it runs (one driver thread per pool, like the local backend's dispatcher):

* The driver asks the shared ``Scheduler`` for batches and submits each as ONE Dask task,
  pinned to one Dask worker (``workers=[address]``, no stealing), at most one batch per worker
  thread: so when a worker dies we know exactly which batches it held, and with one thread per
  worker which one was running (single-task batch: it is the culprit, retried or failed with
  ``WorkerLostError`` per the pool's ``retries``; several tasks: the scheduler re-runs them one
  by one to find the culprit). Retries are the scheduler's, never Dask's.
* Worker membership comes from the scheduler's ``add-worker``/``remove-worker`` events (and a
  periodic check), so a pinned batch of a dead worker never waits forever.
* Results come back as bytes pickled on the worker (unpicklable results become
  ``UnpicklableError``); task exceptions carry their remote traceback as ``__cause__``.
* Functions travel once per worker process (a per-pool session cache on the worker);
  functions and classes of the client's ``__main__`` go by value (cloudpickle), as in Dask.
* Large arguments (``bytes``, ``bytearray``, numpy arrays of at least ``scatter_threshold``
  bytes) are scattered straight to the worker that needs them and passed by reference; the
  same object repeated across the tasks of one call travels once. A batch payload that is
  still large is scattered the same way, so big data never passes through the scheduler.
* Per-task timeouts are enforced on the worker: a batch with a timeout runs its tasks in a
  helper thread watched by the Dask task's thread; an overdue task makes the Dask task return
  at once, its task fails with ``TaskTimeoutError`` and the driver restarts that worker
  process through its nanny (``Client.restart_workers``), which stops the runaway code.

This module is imported only for the dask context (and on Dask workers, to run batches);
``distributed`` is imported lazily so that the module itself stays light.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import io
import itertools
import os
import pickle
import queue
import sys
import threading
import time
import types
import uuid
import warnings
from typing import Any

from .._engine import scheduler as _sched
from .._engine.errors import (
    BrokenProcessPool,
    _ExceptionWithTraceback,
)
from .._engine.scheduler import MIXED, Batch, Job, Scheduler
from ..context import BaseContext

__all__ = ["DaskContext", "DaskBackend"]

_EXTRA_HINT = "pip install 'polyproc[dask]'"

#: Work per batch the chunking aims for: a Dask task round trip costs milliseconds, so
#: batches are longer than the local engine's (whose target is 4 ms).
TARGET_NS = 50_000_000
#: Batches in flight per Dask worker thread (1: a dead worker's culprit is known exactly).
DEPTH = 1
#: Seconds between membership checks (events make them fast; this is the safety net).
REFRESH_INTERVAL = 2.0
#: Unused scattered objects kept per call (LRU) so an object repeated later is not re-sent.
SCATTER_KEEP = 8
#: Times a batch is re-sent to a worker that lost our session (restarted at same address).
MAX_RESENDS = 3


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            f"polyproc's 'dask' context needs dask.distributed, which cannot be imported "
            f"({e}). Install it with: {_EXTRA_HINT}") from e
    return distributed


# ==================================================================== the context


def _unsupported(what: str, instead: str) -> NotImplementedError:
    return NotImplementedError(
        f"{what} is not available on the dask context: Dask workers run on other machines "
        f"and share no memory, locks or pipes with this process, so {what} cannot reach them. "
        f"{instead} See docs/dask.md.")


class DaskContext(BaseContext):
    """A context whose pools and executors run their tasks on a Dask cluster.

    ``address``: a scheduler address (``'tcp://host:8786'``) or a cluster object with a
    ``scheduler_address``; None starts an embedded ``distributed.LocalCluster`` per pool
    (closed with the pool). ``client``: use this existing ``distributed.Client`` instead
    (never closed by polyproc). ``scatter_threshold``: arguments at least this many bytes
    are scattered to workers instead of embedded in tasks (None: never). Other keyword
    options go to ``LocalCluster`` (no address) or to ``Client`` (with an address).
    """

    _name = "dask"

    def __init__(self, address: Any = None, *, client: Any = None,
                 scatter_threshold: int | None = 1 << 20, **options: Any) -> None:
        _import_distributed()
        if address is not None and client is not None:
            raise ValueError("pass either address= or client=, not both")
        if address is not None and not isinstance(address, str):
            address = getattr(address, "scheduler_address", address)
        self.address = address
        self.client = client
        self.scatter_threshold = scatter_threshold
        self.options = options

    def __repr__(self) -> str:
        where = self.address or ("client" if self.client is not None else "embedded LocalCluster")
        return f"<polyproc DaskContext {where}>"

    def _backend_factory(self, processes: int, initializer: Any, initargs: tuple,
                         maxtasksperchild: int | None) -> DaskBackend:
        return DaskBackend(self, processes, initializer, initargs, maxtasksperchild)

    # -- what cannot work across machines
    def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        raise _unsupported("Process", "Submit the function to a pool or executor of this "
                           "context instead (pool.apply_async / executor.submit).")

    def Pipe(self, duplex: bool = True) -> Any:  # noqa: N802
        raise _unsupported("Pipe()", "Return results from tasks instead.")

    def _no_sync(self, name: str) -> NotImplementedError:
        return _unsupported(f"{name}()", f"Use distributed.{name} (a cluster-wide "
                            f"{name.lower()} served by the Dask scheduler) if tasks must "
                            "coordinate.")

    def Lock(self) -> Any:  # noqa: N802
        raise self._no_sync("Lock")

    def RLock(self) -> Any:  # noqa: N802
        raise _unsupported("RLock()", "Use distributed.Lock if tasks must coordinate.")

    def Condition(self, lock: Any = None) -> Any:  # noqa: N802
        raise _unsupported("Condition()", "Use distributed.Event or distributed.Queue.")

    def Semaphore(self, value: int = 1) -> Any:  # noqa: N802
        raise self._no_sync("Semaphore")

    def BoundedSemaphore(self, value: int = 1) -> Any:  # noqa: N802
        raise _unsupported("BoundedSemaphore()", "Use distributed.Semaphore.")

    def Event(self) -> Any:  # noqa: N802
        raise self._no_sync("Event")

    def Barrier(self, parties: int, action: Any = None, timeout: float | None = None) -> Any:  # noqa: N802
        raise _unsupported("Barrier()", "Split the work into calls of the pool instead.")

    def Queue(self, maxsize: int = 0) -> Any:  # noqa: N802
        raise self._no_sync("Queue")

    def JoinableQueue(self, maxsize: int = 0) -> Any:  # noqa: N802
        raise _unsupported("JoinableQueue()", "Use distributed.Queue, or imap_unordered.")

    def SimpleQueue(self) -> Any:  # noqa: N802
        raise _unsupported("SimpleQueue()", "Use distributed.Queue, or imap_unordered.")

    def Value(self, typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:  # noqa: N802
        raise _unsupported("Value()", "Use distributed.Variable, or return values from tasks.")

    def Array(self, typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True) -> Any:  # noqa: N802
        raise _unsupported("Array()", "Pass arrays as arguments (large ones are scattered "
                           "once) and return results from tasks.")

    def RawValue(self, typecode_or_type: Any, *args: Any) -> Any:  # noqa: N802
        raise _unsupported("RawValue()", "Use distributed.Variable.")

    def RawArray(self, typecode_or_type: Any, size_or_initializer: Any) -> Any:  # noqa: N802
        raise _unsupported("RawArray()", "Pass arrays as arguments instead.")

    def Manager(self) -> Any:  # noqa: N802
        raise _unsupported("Manager()", "Use distributed.Variable / Queue / Lock.")


# ==================================================================== the scheduler


class _DaskScheduler(Scheduler):
    """The shared scheduler, with Dask-sized batches and functions pickled for Dask."""

    def _chunk_size(self, job: Job) -> int:
        if job.chunksize:
            return job.chunksize
        if job.cost_ns is None:
            return 1
        size = int(TARGET_NS / max(job.cost_ns, 1.0))
        size = max(1, min(size, job.last_size * _sched.GROWTH))
        if job.length is not None:
            cap = -(-job.length // (self.n_workers * 4))
        else:
            cap = _sched.MAX_UNKNOWN_CHUNK
        return max(1, min(size, cap))

    def func_blob(self, job: Job) -> bytes:
        blob = self._func_blobs.get(job.fid)
        if blob is None:
            blob = _dumps(job.func)
            if len(self._func_blobs) > 4096:
                self._func_blobs.clear()
            self._func_blobs[job.fid] = blob
        return blob


# ==================================================================== pickling


def _by_value_modules() -> tuple[bytes, ...]:
    try:
        import cloudpickle

        return tuple(m.encode() for m in cloudpickle.list_registry_pickle_by_value())
    except Exception:
        return ()


def _needs_cloudpickle(data: bytes) -> bool:
    # What refers to the client's __main__ (or to a module registered with
    # cloudpickle.register_pickle_by_value) must travel by value: workers can't import it.
    return b"__main__" in data or any(m in data for m in _by_value_modules())


class _RefPickler(pickle.Pickler):
    """Pickles the objects in ``refs`` (by id) as references to scattered data."""

    def __init__(self, file: Any, refs: dict[int, str]) -> None:
        super().__init__(file, 5)
        self._refs = refs

    def persistent_id(self, obj: Any) -> str | None:
        return self._refs.get(id(obj))


@functools.lru_cache(maxsize=1)
def _cloud_picklers() -> tuple[type, type]:
    """cloudpickle's pickler, keeping code file names (so remote tracebacks show source
    lines where the file exists), and a variant that also writes scattered references."""
    import cloudpickle

    base = cloudpickle.Pickler
    table = getattr(base, "dispatch_table", None)
    code_reduce = table.get(types.CodeType) if table is not None else None

    class _CloudPickler(base):  # type: ignore[misc, valid-type]
        if code_reduce is not None:
            def _reduce_code(co: types.CodeType) -> Any:
                rv = code_reduce(co)
                args = tuple(co.co_filename if type(a) is str and a == "<dynamic-code>" else a
                             for a in rv[1])
                return (rv[0], args, *rv[2:])

            dispatch_table = collections.ChainMap({types.CodeType: _reduce_code}, table)

        def __init__(self, file: Any, refs: dict[int, str] | None = None) -> None:
            super().__init__(file, protocol=5)
            self._refs = refs

    class _CloudRefPickler(_CloudPickler):
        def persistent_id(self, obj: Any) -> str | None:
            return self._refs.get(id(obj))  # type: ignore[union-attr]

    return _CloudPickler, _CloudRefPickler


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, refs: dict[str, Any]) -> None:
        super().__init__(file)
        self._refs = refs

    def persistent_load(self, pid: Any) -> Any:
        return self._refs[pid]


def _pickling_error(obj: Any) -> BaseException | None:
    try:
        _dumps(obj)
    except Exception as e:
        return e
    return None


def _dumps(obj: Any, refs: dict[int, str] | None = None) -> bytes:
    """Pickle for a Dask worker: fast pickle, cloudpickle where by-value is needed."""
    buf = io.BytesIO()
    try:
        if refs:
            _RefPickler(buf, refs).dump(obj)
            data: bytes | None = buf.getvalue()
        else:
            data = pickle.dumps(obj, 5)
    except (pickle.PicklingError, AttributeError, TypeError):
        data = None
    if data is None or _needs_cloudpickle(data):
        buf = io.BytesIO()
        plain, with_refs = _cloud_picklers()
        (with_refs if refs else plain)(buf, refs).dump(obj)
        data = buf.getvalue()
    return data


# ==================================================================== the worker side

_SESSIONS: collections.OrderedDict[str, _Session] = collections.OrderedDict()
_SESSIONS_LOCK = threading.Lock()
_MAX_SESSIONS = 64


class _Session:
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
        if ns.get(obj.__name__) is obj:
            ns[obj.__name__] = new
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


def _run_batch(token: str, payload: bytes, refs: dict[str, Any] | None = None) -> bytes:
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
            msg = _RefUnpickler(io.BytesIO(payload), refs).load()
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
            session = _SESSIONS[token] = _Session()
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
    needed = {fid} if fid != MIXED else {item[0] for item in items}
    if not needed.issubset(funcs):
        return _reply(("missing", pid))

    from .._engine import worker

    slot = [batch_id, -1, 0, pid]
    t0 = time.monotonic_ns()
    try:
        if timeouts is not None:
            outcome = _run_timed(funcs, fid, star, items, timeouts, slot)
            if outcome[0] == "timeout":
                return _reply(("timeout", outcome[1], pid))
            values, errors = outcome[1]
        else:
            values, errors = worker.run_batch(funcs, fid, star, items, precise, slot)
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
    from .._engine import worker

    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["r"] = worker.run_batch(funcs, fid, star, items, True, slot)
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
        return _dumps(msg)


def _reply_values(values: list, errors: dict | None, elapsed: int, pid: int) -> bytes:
    from .._engine import worker

    if errors:
        errors = worker.check_errors(errors, _dumps, "client")
    msg = ("ok", values, errors, elapsed, pid)
    try:
        return pickle.dumps(msg, 5)
    except BaseException:
        pass
    try:
        return _dumps(msg)
    except BaseException:
        pass
    values, errors = worker.isolate_unpicklable(values, errors, _dumps, "client")
    return _dumps(("ok", values, errors, elapsed, pid))


def _forget_session(token: str) -> None:
    with _SESSIONS_LOCK:
        _SESSIONS.pop(token, None)


# ==================================================================== the backend


class _Worker:
    """The driver's view of one Dask worker."""

    __slots__ = ("address", "nthreads", "inflight", "known_fids", "fresh", "pid",
                 "restarting", "suspect")

    def __init__(self, address: str, nthreads: int) -> None:
        self.address = address
        self.nthreads = max(1, int(nthreads or 1))
        self.inflight: list[int] = []  # batch ids, in submission order
        self.known_fids: set[int] = set()
        self.fresh = True  # the next message carries the session (functions, initializer)
        self.pid: int | None = None
        self.restarting = False
        self.suspect = False  # sending to it failed: skip it until the scheduler lists it


class _Entry:
    """An argument scattered to the cluster, reused by the tasks of one call."""

    __slots__ = ("obj", "future", "key", "worker", "users")

    def __init__(self, obj: Any, future: Any, worker: str) -> None:
        self.obj = obj  # keeps id(obj) meaning this object while the entry lives
        self.future = future
        self.key = str(future.key)
        self.worker = worker
        self.users = 0


class _Flight:
    __slots__ = ("batch", "worker", "future", "key", "entries", "extra", "resends")

    def __init__(self, batch: Batch, worker: _Worker, future: Any, key: str,
                 entries: list[_Entry], extra: list[Any], resends: int) -> None:
        self.batch = batch
        self.worker = worker
        self.future = future
        self.key = key
        self.entries = entries
        self.extra = extra  # other futures to release with this batch (scattered payload)
        self.resends = resends


class DaskBackend:
    """Runs a scheduler's batches as Dask tasks (the interface of ``LocalBackend``)."""

    def __init__(self, ctx: DaskContext, processes: int, initializer: Any = None,
                 initargs: tuple = (), maxtasksperchild: int | None = None) -> None:
        if maxtasksperchild is not None:
            raise NotImplementedError(
                "maxtasksperchild / max_tasks_per_child is not supported on the dask context: "
                "Dask worker processes are shared and long-lived. Start the workers with "
                "`dask worker --lifetime ...` to recycle them instead.")
        distributed = _import_distributed()
        self._distributed = distributed
        self.ctx = ctx
        self._token = uuid.uuid4().hex[:12]
        self._threshold = ctx.scatter_threshold
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._init_blob: bytes | None = None
        self._cluster: Any = None
        self._own_client = False
        if not hasattr(distributed.Future, "_result"):
            raise ImportError(f"this version of distributed ({distributed.__version__}) is "
                              f"not supported by polyproc; {_EXTRA_HINT} installs one that is")
        if ctx.client is not None:
            client = ctx.client
        else:
            options = dict(ctx.options)
            try:
                if ctx.address is None:
                    cluster_opts = {"n_workers": processes, "threads_per_worker": 1,
                                    "processes": True, "dashboard_address": "127.0.0.1:0"}
                    cluster_opts.update(options)
                    self._cluster = distributed.LocalCluster(**cluster_opts)
                    client = distributed.Client(self._cluster, set_as_default=False,
                                                direct_to_workers=True)
                else:
                    options.setdefault("set_as_default", False)
                    client = distributed.Client(ctx.address, **options)
            except BaseException:
                if self._cluster is not None:
                    self._cluster.close()
                raise
            self._own_client = True
        self.client = client
        self._restarts: list[threading.Thread] = []
        self.n = processes
        self._events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._wake_pending = False
        self.scheduler = _DaskScheduler(max(1, processes), self.wakeup)
        self._workers: dict[str, _Worker] = {}
        self._inflight: dict[int, _Flight] = {}
        self._scatter: dict[int, tuple[Job, collections.OrderedDict[int, _Entry]]] = {}
        self._keys = itertools.count(1)
        self._closing = False
        self._terminating = False
        self._closed = False
        self._broken = False
        self._restart_warned = False
        self.stats = collections.Counter()  # batches, scattered objects/payloads, bytes sent
        self._prev_handler = None
        self._subscribed = False
        try:
            handlers = getattr(client, "_event_handlers", {})
            self._prev_handler = handlers.get("all")
            client.subscribe_topic("all", self._on_event)
            self._subscribed = True
        except Exception:  # membership then comes from the periodic check only
            pass
        self.thread = threading.Thread(target=self._run, name="polyproc-dask-driver",
                                       daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- any thread

    def wakeup(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            self._events.put(("wake",))

    def close(self) -> None:
        self._closing = True
        self.wakeup()

    def terminate(self) -> None:
        self._closing = self._terminating = True
        self._events.put(("wake",))

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def stop_job(self, job_id: int) -> bool:
        raise NotImplementedError(
            "terminate() is not supported on the dask context: its workers belong to the "
            "cluster. Bound running tasks with timeout= / task_timeout= instead, or cancel "
            "the cluster's own tasks with distributed.Client.cancel.")

    def worker_pids(self) -> list[int]:
        """The pids of the cluster's worker processes (asks the workers)."""
        try:
            return sorted(self.client.run(os.getpid, on_error="ignore").values())
        except Exception:
            return sorted(w.pid for w in list(self._workers.values()) if w.pid)

    @property
    def address(self) -> str | None:
        try:
            return self.client.scheduler.address
        except Exception:
            return self.ctx.address if isinstance(self.ctx.address, str) else None

    # ---------------------------------------------------------------- client-loop callbacks

    def _on_event(self, event: Any) -> None:
        # Runs in the client's event loop: only hand the news to the driver.
        try:
            if self._prev_handler is not None:
                self._prev_handler(event)
        except Exception:
            pass
        try:
            msg = event[1]
            action = msg.get("action")
        except Exception:
            return
        if action == "remove-worker":
            self._events.put(("removed", msg.get("worker")))
        elif action == "add-worker":
            self._events.put(("added", msg.get("worker")))

    async def _watch(self, future: Any, batch_id: int, key: str) -> None:
        # Runs in the client's event loop: wait for the task, fetch its reply bytes.
        try:
            result = await future._result(raiseit=False)
            status = future.status
        except (asyncio.CancelledError, concurrent.futures.CancelledError) as e:
            result, status = e, "cancelled"  # by us, or its data was lost
        except BaseException as e:
            result, status = (type(e), e, None), "error"
        self._events.put(("done", batch_id, key, status, result))

    # ---------------------------------------------------------------- the driver

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug or a lost scheduler must not hang callers
            if isinstance(e, _ClientClosed) or self._closed_client():
                error = BrokenProcessPool(
                    "the pool lost its connection to the Dask scheduler"
                    f"{self._where()}: its Dask client was closed")
            else:
                import traceback

                traceback.print_exc()
                error = BrokenProcessPool(f"the Dask pool's driver failed: {e!r}"
                                          + self._where())
            self.scheduler.fail_all(error)
        finally:
            self._shutdown()

    def _where(self) -> str:
        addr = self.address
        return f" (scheduler {addr})" if addr else ""

    def _closed_client(self) -> bool:
        return getattr(self.client, "status", "running") in ("closing", "closed")

    def _loop(self) -> None:
        sched = self.scheduler
        self._refresh_workers()
        next_refresh = time.monotonic() + REFRESH_INTERVAL
        while True:
            if self._terminating:
                return
            if self._closing and sched.idle() and not self._inflight:
                return
            if self._closed_client():
                raise _ClientClosed()
            if not self._broken:
                self._fill()
            busy = bool(self._inflight) or bool(sched.pending) or not self._workers
            timeout = max(0.0, next_refresh - time.monotonic()) if busy else None
            try:
                ev = self._events.get(timeout=timeout)
            except queue.Empty:
                ev = None
            while ev is not None:
                self._handle(ev)
                if self._terminating:
                    return
                try:
                    ev = self._events.get_nowait()
                except queue.Empty:
                    ev = None
            if time.monotonic() >= next_refresh:
                if busy or not self._subscribed:
                    self._refresh_workers()
                # Events report membership at once; polling is the safety net.
                slow = self._subscribed and self._workers
                next_refresh = time.monotonic() + REFRESH_INTERVAL * (5 if slow else 1)
            self._drop_finished_scatter()

    def _handle(self, ev: tuple) -> None:
        kind = ev[0]
        if kind == "wake":
            self._wake_pending = False
        elif kind == "done":
            self._on_done(*ev[1:])
        elif kind == "removed":
            if ev[1] is not None:
                self._on_worker_gone(ev[1])
        elif kind == "added":
            if ev[1] not in self._workers:
                self._refresh_workers()
        elif kind == "restarted":
            self._on_restarted(ev[1], ev[2])

    # ---------------------------------------------------------------- membership

    def _refresh_workers(self) -> None:
        try:
            current = dict(self.client.nthreads())
        except Exception:
            if self._closed_client():
                raise _ClientClosed() from None
            return  # e.g. reconnecting to the scheduler: nothing is known now
        if getattr(self.client, "status", "running") != "running":
            return
        for addr in list(self._workers):
            if addr not in current:
                self._on_worker_gone(addr)
        for addr in current:
            if addr in self._workers:
                self._workers[addr].suspect = False
        new = [addr for addr in current if addr not in self._workers]
        for addr in new:
            self._workers[addr] = _Worker(addr, current[addr])
        if new:  # their pids, for messages about them (and worker_pids())
            try:
                pids = self.client.run(os.getpid, workers=new, on_error="ignore")
            except Exception:
                pids = {}
            for addr, pid in pids.items():
                w = self._workers.get(addr)
                if w is not None and isinstance(pid, int):
                    w.pid = pid
        self._update_capacity()

    def _update_capacity(self) -> None:
        total = sum(w.nthreads for w in self._workers.values())
        self.scheduler.n_workers = max(1, total)

    def _on_worker_gone(self, addr: str) -> None:
        w = self._workers.pop(addr, None)
        if w is None:
            return
        flights = [self._inflight.pop(bid) for bid in w.inflight if bid in self._inflight]
        w.inflight.clear()
        # Pinned batches run first come, first served, up to one per thread: the first
        # `nthreads` of those not finished were running when the worker died.
        unfinished = [f.batch for f in flights if f.future.status != "finished"]
        self._cancel([f.future for f in flights] + [x for f in flights for x in f.extra])
        for f in flights:
            self._unuse(f)
        running = unfinished[:w.nthreads]
        for batch in running:
            self.scheduler.worker_lost([batch], (batch.id, -1), w.pid, None)
        rest = [f.batch for f in flights if f.batch not in running]
        if rest:
            self.scheduler.worker_lost(rest, (0, -1), w.pid, None)
        for _job, cache in self._scatter.values():
            for oid, entry in list(cache.items()):
                if entry.worker == addr:  # its data may be gone with the worker
                    del cache[oid]
                    if not entry.users:
                        entry.future.release()
        self._update_capacity()

    # ---------------------------------------------------------------- dispatching

    def _fill(self) -> None:
        sched = self.scheduler
        workers = sorted((w for w in self._workers.values()
                          if not w.restarting and not w.suspect),
                         key=lambda w: len(w.inflight) / w.nthreads)
        for w in workers:
            while len(w.inflight) < w.nthreads * DEPTH:
                batch = sched.next_batch(w)
                if batch is None:
                    return
                self._send(w, batch)
                if self._broken or w.address not in self._workers:
                    break

    def _send(self, w: _Worker, batch: Batch, resends: int = 0) -> None:
        sched = self.scheduler
        entries: list[_Entry] = []
        extra: list[Any] = []
        stage = "pickle"
        try:
            fresh = w.fresh
            known = set() if fresh else set(w.known_fids)
            msg = sched.batch_message(batch, known)
            init = self._init_message() if fresh else None
            stage = "scatter"
            entries = self._scatter_args(batch, w)
            stage = "pickle"
            payload = _dumps((fresh, init, msg, self._timeouts(batch)),
                             {id(e.obj): e.key for e in entries} if entries else None)
            stage = "submit"
            data: Any = payload
            if self._threshold is not None and len(payload) >= self._threshold:
                data = self.client.scatter(payload, workers=[w.address], hash=False)
                extra.append(data)
                self.stats["scattered_payloads"] += 1
            job = batch.job if batch.job is not None else batch.jobs[0]  # type: ignore[index]
            name = job.name if batch.job is not None else "apply"
            key = f"polyproc-{name}-{self._token}-{batch.id}-{next(self._keys)}"
            refs_arg = {e.key: e.future for e in entries} if entries else None
            future = self.client.submit(_run_batch, self._token, data, refs_arg, key=key,
                                        workers=[w.address], allow_other_workers=False,
                                        pure=False)
        except BaseException as e:
            for entry in entries:
                entry.users -= 1
            for x in extra:
                x.release()
            if isinstance(e, _InitError):
                self._fail_init(e.__cause__)  # fails every batch taken, this one too
            elif self._closed_client():
                raise _ClientClosed() from e
            elif stage == "pickle":  # the caller's function or arguments: their error
                sched.unsendable(batch, e, _pickling_error)
            else:  # the cluster's (e.g. the worker just left): run it elsewhere
                w.suspect = True
                sched.worker_lost([batch], (0, -1), w.pid, None)
            return
        _sched.learn_funcs(known, msg[1])  # only now: the worker gets them with this batch
        w.known_fids = known
        w.fresh = False
        self.stats["batches"] += 1
        self.stats["payload_bytes"] += len(payload)
        self.stats["max_payload"] = max(self.stats["max_payload"], len(payload))
        self._inflight[batch.id] = _Flight(batch, w, future, key, entries, extra, resends)
        w.inflight.append(batch.id)
        self.client.loop.add_callback(self._watch, future, batch.id, key)

    def _init_message(self) -> bytes | None:
        if self._initializer is None:
            return None
        if self._init_blob is None:
            try:
                self._init_blob = _dumps((self._initializer, self._initargs))
            except Exception as e:
                raise _InitError() from e
        return self._init_blob

    def _timeouts(self, batch: Batch) -> Any:
        if batch.job is not None:
            return batch.job.timeout
        limits = [job.timeout for job in batch.jobs]  # type: ignore[union-attr]
        return limits if any(t is not None for t in limits) else None

    # ---------------------------------------------------------------- scattering

    def _scatter_args(self, batch: Batch, w: _Worker) -> list[_Entry]:
        threshold = self._threshold
        if threshold is None:
            return []
        big = _big_arguments(batch, threshold)
        if not big:
            return []
        entries = []
        for obj in big:
            job = batch.job if batch.job is not None else _job_of(batch, obj)
            holder = self._scatter.get(job.id)
            if holder is None:
                holder = self._scatter[job.id] = (job, collections.OrderedDict())
            cache = holder[1]
            entry = cache.get(id(obj))
            if entry is not None and entry.future.status != "finished":  # its data was lost
                del cache[id(obj)]
                if entry.users <= 0:
                    entry.future.release()
                entry = None
            if entry is None:
                future = self.client.scatter(obj, workers=[w.address], hash=False)
                entry = cache[id(obj)] = _Entry(obj, future, w.address)
                self.stats["scattered_objects"] += 1
            cache.move_to_end(id(obj))
            entry.users += 1
            entries.append(entry)
        return entries

    def _unuse(self, flight: _Flight) -> None:
        if not flight.entries:
            return
        for entry in flight.entries:
            entry.users -= 1
        for job_id in _jobs_of(flight.batch):
            holder = self._scatter.get(job_id)
            if holder is None:
                continue
            cache = holder[1]
            unused = [oid for oid, e in cache.items() if e.users <= 0]
            for oid in unused[:max(0, len(unused) - SCATTER_KEEP)]:
                cache.pop(oid).future.release()

    def _drop_finished_scatter(self) -> None:
        for job_id, (job, cache) in list(self._scatter.items()):
            if job.finished and not any(e.users > 0 for e in cache.values()):
                del self._scatter[job_id]
                for entry in cache.values():
                    entry.future.release()

    # ---------------------------------------------------------------- outcomes

    def _end(self, flight: _Flight) -> None:
        self._inflight.pop(flight.batch.id, None)
        try:
            flight.worker.inflight.remove(flight.batch.id)
        except ValueError:
            pass
        self._unuse(flight)
        flight.future.release()
        for x in flight.extra:
            x.release()

    def _on_done(self, batch_id: int, key: str, status: str, result: Any) -> None:
        flight = self._inflight.get(batch_id)
        if flight is None or flight.key != key:
            return  # already handled (its worker died, or the batch was re-sent)
        sched = self.scheduler
        batch, w = flight.batch, flight.worker
        if status == "error":
            exc = result[1] if isinstance(result, tuple) and len(result) == 3 else result
            if isinstance(exc, self._distributed.KilledWorker):
                self._on_worker_gone(w.address)
                if batch.id in self._inflight:  # the worker was not ours any more
                    self._end(flight)
                    sched.worker_lost([batch], (batch.id, -1), w.pid, None)
                return
            self._end(flight)
            if not isinstance(exc, BaseException):
                exc = RuntimeError(f"the Dask task of this batch failed: {exc!r}")
            _note(exc, "(the Dask task running this batch failed before it could run it; "
                  "polyproc and the task's modules must be importable on the Dask workers)")
            sched.fail_batch(batch, exc)
            return
        if status != "finished":  # cancelled without us: its data was lost; run it again
            self._end(flight)
            sched.worker_lost([batch], (0, -1), w.pid, None)
            return
        self._end(flight)
        try:
            reply = pickle.loads(result)
        except BaseException as e:
            _note(e, "(the results of this batch could not be unpickled in the client)")
            sched.outcomes_unloadable(batch, e)
            return
        kind = reply[0]
        if kind == "ok":
            _, values, errors, elapsed, pid = reply
            w.pid = pid
            sched.complete(batch.id, values, errors, elapsed, pid)
        elif kind == "missing":
            w.pid = reply[1]
            w.fresh = True
            w.known_fids = set()
            if flight.resends >= MAX_RESENDS or w.address not in self._workers:
                sched.worker_lost([batch], (0, -1), w.pid, None)
            else:
                self._send(w, batch, flight.resends + 1)
        elif kind == "init-error":
            self._fail_init(reply[1], reply[2])  # fails every batch taken, this one too
        elif kind == "load-error":
            exc = reply[1]
            _note(exc, f"(Dask worker pid {reply[2]} could not unpickle this batch: the "
                  "modules its function and arguments come from must be importable there, "
                  "or registered with cloudpickle.register_pickle_by_value)")
            sched.fail_batch(batch, exc)
        elif kind == "timeout":
            _, pos, pid = reply
            w.pid = pid
            self._on_timeout(w, batch, pos)
        elif kind == "lost":
            _, pos, pid, code = reply
            w.pid = pid
            sched.worker_lost([batch], (batch.id, -1 if pos is None else pos), pid, code)

    def _fail_init(self, exc: Any, pid: int | None = None) -> None:
        where = f" in Dask worker pid {pid}" if pid else ""
        err = BrokenProcessPool(
            f"the pool's initializer raised {type(exc).__name__}{where}; the pool cannot "
            "run tasks. Fix the initializer (its traceback is the cause).")
        err.__cause__ = exc
        self._broken = True
        self._closing = True
        self.scheduler.fail_all(err)

    def _on_timeout(self, w: _Worker, batch: Batch, pos: int) -> None:
        """A task overran its timeout on ``w``: fail it, re-run the rest, restart ``w``."""
        flights = [self._inflight[bid] for bid in list(w.inflight) if bid in self._inflight]
        for f in flights:
            self._end(f)
        self._cancel([f.future for f in flights])
        self.scheduler.worker_lost([batch] + [f.batch for f in flights], (batch.id, pos),
                                   w.pid, None, timed_out=(batch.id, pos))
        w.restarting = True
        thread = threading.Thread(target=self._restart, args=(w.address,), daemon=True,
                                  name="polyproc-dask-restart")
        thread.start()
        self._restarts = [t for t in self._restarts if t.is_alive()] + [thread]

    def _restart(self, address: str) -> None:
        try:
            try:
                status = self.client.restart_workers([address], raise_for_error=False)
            except TypeError:  # distributed < 2024.2
                status = self.client.restart_workers([address])
            ok = status.get(address) in ("OK", "removed")
            detail = status.get(address)
        except Exception as e:
            ok, detail = False, repr(e)
        self._events.put(("restarted", address, (ok, detail)))

    def _on_restarted(self, address: str, outcome: tuple[bool, Any]) -> None:
        ok, detail = outcome
        w = self._workers.get(address)
        if w is None:
            return  # gone, as it should be: its replacement registers as a new worker
        if not ok:
            if not self._restart_warned:
                self._restart_warned = True
                warnings.warn(
                    f"polyproc could not restart Dask worker {address} after a task timed "
                    f"out ({detail}); the overdue task keeps running there. Per-task "
                    "timeouts need workers run by a nanny (the default of `dask worker`).",
                    RuntimeWarning, stacklevel=1)
            w.restarting = False
        # else: the worker's removal event follows (or came already)

    def _cancel(self, futures: list[Any]) -> None:
        # Releasing our only reference makes the scheduler forget the task (a batch still
        # waiting for its dead worker, or one running: its result is dropped) and cancels
        # the future locally, which ends its watcher; unlike Client.cancel, it never blocks.
        for future in futures:
            try:
                future.release()
            except Exception:
                pass

    # ---------------------------------------------------------------- shutdown

    def _shutdown(self) -> None:
        sched = self.scheduler
        flights = list(self._inflight.values())
        self._inflight.clear()
        if flights and not self._closed_client():
            self._cancel([f.future for f in flights] + [x for f in flights for x in f.extra])
        if self._terminating or flights or not sched.idle():
            sched.cancel_pending()
            if not sched.idle():
                sched.fail_all(_terminated_error())
        for _job, cache in self._scatter.values():
            for entry in cache.values():
                try:
                    entry.future.release()
                except Exception:
                    pass
        self._scatter.clear()
        if self._subscribed and not self._closed_client():
            try:
                if self._prev_handler is not None:
                    self.client.subscribe_topic("all", self._prev_handler)
                else:
                    self.client.unsubscribe_topic("all")
            except Exception:
                pass
        if not self._own_client and not self._closed_client():
            try:  # a shared client: leave nothing of ours on its workers
                self.client.run(_forget_session, self._token, on_error="ignore", wait=False)
            except Exception:
                pass
        deadline = time.monotonic() + 10
        for thread in self._restarts:  # let restarts finish before closing their client
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._own_client:
            try:
                self.client.close(timeout=10)
            except Exception:
                pass
        if self._cluster is not None:
            try:
                self._cluster.close(timeout=10)
            except Exception:
                pass
        self._closed = True


class _ClientClosed(Exception):
    """The pool's Dask client is closed (its scheduler is gone): nothing can run."""


class _InitError(Exception):
    """The initializer could not be pickled."""


def _terminated_error() -> BaseException:
    from concurrent.futures import CancelledError

    return CancelledError("the pool was terminated before this task finished")


def _note(exc: BaseException, note: str) -> None:
    try:
        exc.add_note(note)
    except Exception:
        pass


def _jobs_of(batch: Batch) -> list[int]:
    if batch.job is not None:
        return [batch.job.id]
    return list({job.id for job in batch.jobs})  # type: ignore[union-attr]


def _job_of(batch: Batch, obj: Any) -> Job:
    for pos, (_fid, args, kwargs) in enumerate(batch.items):
        if any(a is obj for a in args) or any(v is obj for v in (kwargs or {}).values()):
            return batch.jobs[pos]  # type: ignore[index]
    return batch.jobs[0]  # type: ignore[index]


def _big_arguments(batch: Batch, threshold: int) -> list[Any]:
    """Arguments of ``batch`` (top level, and elements of argument tuples) worth scattering."""
    np = sys.modules.get("numpy")
    ndarray = np.ndarray if np is not None else ()
    found: dict[int, Any] = {}

    def check(x: Any) -> None:
        t = type(x)
        if t is bytes or t is bytearray:
            if len(x) >= threshold:
                found[id(x)] = x
        elif ndarray and isinstance(x, ndarray):
            if x.nbytes >= threshold and x.dtype.hasobject is False:
                found[id(x)] = x

    if batch.job is not None:
        for item in batch.items:
            if type(item) is tuple or type(item) is list:
                for a in item:
                    check(a)
            else:
                check(item)
    else:
        for _fid, args, kwargs in batch.items:
            for a in args:
                check(a)
            if kwargs:
                for v in kwargs.values():
                    check(v)
    return list(found.values())
