"""The client side of the Dask backend: one driver thread per pool, feeding a Dask cluster.

The driver asks the pool's ``Scheduler`` for batches and submits each as ONE Dask task
(``worker.run_batch``), pinned to one Dask worker (``workers=[address]``, no stealing), at
most one batch per worker thread: so when a worker dies we know exactly which batches it
held, and with one thread per worker which one was running (its ``Culprit``: a one-task batch
is retried or fails with ``WorkerLostError`` per the pool's ``retries``; a larger one is
re-run task by task to find the culprit). Retries are the scheduler's, never Dask's.

* Worker membership comes from the scheduler's ``add-worker``/``remove-worker`` events (and a
  periodic check), so a pinned batch of a dead worker never waits forever.
* Replies come back as bytes pickled on the worker; the driver unpickles them here, so an
  outcome that cannot be unpickled fails its task only (``outcomes_unloadable``).
* Functions travel once per worker process (the worker keeps them in the pool's session).
* Large arguments go through the ``ScatterCache`` (``scatter.py``); a batch payload that is
  still large is scattered the same way, so big data never passes through the scheduler.
* A task over its timeout makes the Dask task return at once; the driver fails that task,
  re-runs the rest and restarts the worker process through its nanny
  (``Client.restart_workers``), which stops the runaway code.

The client's event loop only hands news to the driver (``_on_event``, ``_watch``): every
decision is taken in the driver thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import os
import pickle
import queue
import threading
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any

from ..._engine.errors import BrokenProcessPool
from ..._engine.jobs import Batch, Culprit
from ..._engine.scheduler import learn_funcs
from . import import_distributed
from .pickling import dumps, pickling_error
from .scatter import Entry, ScatterCache
from .scheduling import make_scheduler
from .worker import forget_session, run_batch

if TYPE_CHECKING:
    from . import DaskContext

#: Batches in flight per Dask worker thread (1: a dead worker's culprit is known exactly).
DEPTH = 1
#: Seconds between membership checks (events make them fast; this is the safety net).
REFRESH_INTERVAL = 2.0
#: Times a batch is re-sent to a worker that lost our session (restarted at same address).
MAX_RESENDS = 3


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


class _Flight:
    """A batch submitted as a Dask task, until its reply is handled."""

    __slots__ = ("batch", "worker", "future", "key", "entries", "extra", "resends")

    def __init__(self, batch: Batch, worker: _Worker, future: Any, key: str,
                 entries: list[Entry], extra: list[Any], resends: int) -> None:
        self.batch = batch
        self.worker = worker
        self.future = future
        self.key = key
        self.entries = entries
        self.extra = extra  # other futures to release with this batch (scattered payload)
        self.resends = resends


class DaskBackend:
    """Runs a scheduler's batches as Dask tasks (a ``Backend``, see ``_backends/base.py``)."""

    def __init__(self, ctx: DaskContext, processes: int, initializer: Any = None,
                 initargs: tuple = (), maxtasksperchild: int | None = None) -> None:
        if maxtasksperchild is not None:
            raise NotImplementedError(
                "maxtasksperchild / max_tasks_per_child is not supported on the dask context: "
                "Dask worker processes are shared and long-lived. Start the workers with "
                "`dask worker --lifetime ...` to recycle them instead.")
        self._distributed = import_distributed()
        self.ctx = ctx
        self._token = uuid.uuid4().hex[:12]
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._init_blob: bytes | None = None
        self._own_client = ctx.client is None
        client, self._cluster = ctx._connect(processes)
        self.client = client
        self._restarts: list[threading.Thread] = []
        self.n = processes
        self._events: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._wake_pending = False
        self.scheduler = make_scheduler(max(1, processes), self.wakeup)
        self._workers: dict[str, _Worker] = {}
        self._inflight: dict[int, _Flight] = {}
        self._keys = itertools.count(1)
        self._closing = False
        self._terminating = False
        self._closed = False
        self._broken = False
        self._restart_warned = False
        self.stats: collections.Counter[str] = collections.Counter()  # batches, scattered objects/payloads, bytes sent
        self._scatter = ScatterCache(client, ctx.scatter_threshold, self.stats)
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
            self._scatter.drop_finished()

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
            self._scatter.release(f.batch, f.entries)
        running = unfinished[:w.nthreads]
        for batch in running:  # which of its tasks ran is unknown
            self.scheduler.worker_lost([batch], Culprit(batch.id), w.pid)
        rest = [f.batch for f in flights if f.batch not in running]
        if rest:  # had not started: innocent
            self.scheduler.worker_lost(rest, None, w.pid)
        self._scatter.forget_worker(addr)
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
        entries: list[Entry] = []
        extra: list[Any] = []
        stage = "pickle"
        try:
            fresh = w.fresh
            known = set() if fresh else set(w.known_fids)
            msg = sched.batch_message(batch, known)
            init = self._init_message() if fresh else None
            stage = "scatter"
            entries = self._scatter.use(batch, w.address)
            stage = "pickle"
            payload = dumps((fresh, init, msg, self._timeouts(batch)),
                             {id(e.obj): e.key for e in entries} if entries else None)
            stage = "submit"
            data: Any = payload
            threshold = self._scatter.threshold
            if threshold is not None and len(payload) >= threshold:
                data = self.client.scatter(payload, workers=[w.address], hash=False)
                extra.append(data)
                self.stats["scattered_payloads"] += 1
            job = batch.job if batch.job is not None else batch.jobs[0]  # type: ignore[index]
            name = job.name if batch.job is not None else "apply"
            key = f"polyproc-{name}-{self._token}-{batch.id}-{next(self._keys)}"
            refs_arg = {e.key: e.future for e in entries} if entries else None
            future = self.client.submit(run_batch, self._token, data, refs_arg, key=key,
                                        workers=[w.address], allow_other_workers=False,
                                        pure=False)
        except BaseException as e:
            self._scatter.unsent(entries)
            for x in extra:
                x.release()
            if isinstance(e, _InitError):
                self._fail_init(e.__cause__)  # fails every batch taken, this one too
            elif self._closed_client():
                raise _ClientClosed() from e
            elif stage == "pickle":  # the caller's function or arguments: their error
                sched.unsendable(batch, e, pickling_error)
            else:  # the cluster's (e.g. the worker just left): run it elsewhere
                w.suspect = True
                sched.worker_lost([batch], None, w.pid)  # it never ran
            return
        learn_funcs(known, msg[1])  # only now: the worker gets them with this batch
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
                self._init_blob = dumps((self._initializer, self._initargs))
            except Exception as e:
                raise _InitError() from e
        return self._init_blob

    def _timeouts(self, batch: Batch) -> Any:
        if batch.job is not None:
            return batch.job.timeout
        limits = [job.timeout for job in batch.jobs]  # type: ignore[union-attr]
        return limits if any(t is not None for t in limits) else None

    # ---------------------------------------------------------------- outcomes

    def _end(self, flight: _Flight) -> None:
        self._inflight.pop(flight.batch.id, None)
        try:
            flight.worker.inflight.remove(flight.batch.id)
        except ValueError:
            pass
        self._scatter.release(flight.batch, flight.entries)
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
                    sched.worker_lost([batch], Culprit(batch.id), w.pid)
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
            sched.worker_lost([batch], None, w.pid)
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
                sched.worker_lost([batch], None, w.pid)  # it never ran
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
            sched.worker_lost([batch], Culprit(batch.id, -1 if pos is None else pos), pid, code)

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
        self.scheduler.worker_lost([batch] + [f.batch for f in flights],
                                   Culprit(batch.id, pos, timed_out=True), w.pid)
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
                self.client.run(forget_session, self._token, on_error="ignore", wait=False)
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
