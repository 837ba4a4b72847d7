"""The local backend: worker processes on this machine, driven by one dispatcher thread.

The dispatcher is a single selector loop over every worker's socket (results in, batches out,
non-blocking both ways so neither side can block the other), every worker's sentinel (death)
and a wakeup pipe (new work, consumed results, shutdown). A dead worker is just another event:
the scheduler gives each task it held an outcome, and a replacement starts.

A ``Pool`` starts all its workers when it is made; an executor (``on_demand``) one, then
another only when a batch is waiting and every worker has all it can take (not under fork).
"""

from __future__ import annotations

import collections
import itertools
import os
import selectors
import signal
import socket
import sys
import threading
import time
from typing import Any

from .. import util
from .._engine import errors as _errors
from .._engine import wire, worker
from .._engine.errors import describe_exit
from .._engine.jobs import Batch
from .._engine.scheduler import Scheduler, learn_funcs
from .._engine.slots import Slots
from . import starts

_WAKE, _SOCK, _SENTINEL = 0, 1, 2
#: A worker gets a second batch queued behind its running one while batches last less.
_PREFETCH_NS = 20_000_000
_STARTUP_FAILURES_LIMIT = 3

# Spawn and forkserver workers import the main module as ``__mp_main__``, so what they send
# back of its classes (results, exceptions) is pickled under that name; like the stdlib's
# ``multiprocessing`` package, make the name resolve to ``__main__`` here.
if "__main__" in sys.modules:
    sys.modules.setdefault("__mp_main__", sys.modules["__main__"])


class WorkerHandle:
    """The dispatcher's view of one worker process."""

    __slots__ = ("slot", "proc", "sock", "reader", "writer", "inflight", "known_fids", "pid",
                 "sent", "timed_out", "eof", "dead", "writing", "completed", "stopped")

    def __init__(self, slot: int, proc: Any, sock: socket.socket) -> None:
        self.slot = slot
        self.proc = proc
        self.sock = sock
        self.reader = wire.FrameReader(sock)
        self.writer = wire.FrameWriter(sock)
        self.inflight: collections.deque[Batch] = collections.deque()
        self.known_fids: set[int] = set()
        self.pid = proc.pid
        self.sent = 0
        self.timed_out: tuple[int, int] | None = None
        self.eof = False
        self.dead = False
        self.writing = False
        self.completed = 0
        self.stopped = False  # killed to stop a task of a job being stopped (terminate())


class LocalBackend:
    """Runs a scheduler's batches on ``processes`` worker processes of context ``ctx``."""

    def __init__(self, ctx: Any, processes: int, initializer: Any = None,
                 initargs: tuple = (), maxtasksperchild: int | None = None,
                 name: str = "PoolWorker", on_demand: bool = False) -> None:
        self.ctx = ctx
        self.n = processes
        self.initializer = initializer
        self.initargs = tuple(initargs)
        self.maxtasks = maxtasksperchild
        self.name = name
        self._wake_r = self._wake_w = -1
        self._wake_pending = False
        # Taken to write a wakeup and to close the pipe: once closed, its fd number may be
        # reused by any file of this process, which a late wakeup must never write to.
        self._wake_lock = threading.Lock()
        self.scheduler = Scheduler(processes, self.wakeup)
        self.workers: dict[int, WorkerHandle] = {}
        self._counter = itertools.count(1)
        self._closing = False  # no new work; stop when idle
        self._terminating = False  # stop now
        # kill_workers(): (signal, what to tell the tasks the workers held); None: terminate.
        self._kill: tuple[int, str] | None = None
        self._signalled = threading.Event()  # the workers were told to stop (or are gone)
        self._startup_failures = 0
        method = ctx.get_start_method()
        self._fork = method == "fork"
        self._forkserver = method == "forkserver"
        # Workers started as work needs them (the executor's, as the stdlib's): one now, more
        # only when a batch is waiting and every worker has all it can take (see _fill).
        # Not under fork, like the stdlib: forking later means forking a threaded process.
        self._on_demand = on_demand and not self._fork
        # The executor's workers are not daemonic (the stdlib's since 3.9), so its tasks may
        # start processes and pools of their own; a Pool's are, as the stdlib's.
        self._daemon = not on_demand
        # On demand, how many workers the submits so far asked for, and how many tasks
        # workers have finished that no submit has counted on yet (an idle worker each, as
        # the stdlib reckons it); see demand().
        self._wanted = 1
        self._credits = 1  # the worker started first is idle
        # Threads waiting for the dispatcher's next _fill (see _after_fill), and whether
        # each wants what is still unsent cancelled then.
        self._waiters: list[tuple[threading.Event, bool]] = []
        self._waiters_lock = threading.Lock()
        self._loop_done = False
        # Slots whose worker could not be started (out of fds, memory, processes): retried
        # with back-off; see _start_failed.
        self.starts = starts.StartRetry()
        # Set just below; None only while a failed __init__ cleans up (which checks).
        self.slots: Slots = None  # type: ignore[assignment]
        self.sel: selectors.DefaultSelector = None  # type: ignore[assignment]
        try:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            self.slots = Slots(processes)
            self.sel = selectors.DefaultSelector()
            self.sel.register(self._wake_r, selectors.EVENT_READ, (_WAKE, None))
            self._start_workers(1 if self._on_demand else processes)
            self.thread = threading.Thread(target=self._run, name="polyproc-dispatcher",
                                           daemon=True)
            self.thread.start()
        except BaseException as e:
            # Out of fds, memory or processes: release what was made (workers, fds), so a
            # program that retries does not leak with every try.
            self._terminating = True
            self._shutdown_workers()
            if isinstance(e, OSError) or starts.is_transient(e):  # what ran out, what to do
                starts.add_note(e, f"(polyproc could not start a pool of {processes} "
                                   f"worker(s): {starts.describe(e)})")
            raise

    # ---------------------------------------------------------------- any thread

    def wakeup(self) -> None:
        """Make the dispatcher look at the scheduler again (cheap when already pending)."""
        if not self._wake_pending:
            self._wake_pending = True
            with self._wake_lock:
                if self._wake_w < 0:
                    return  # the dispatcher is gone
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:
                    pass

    def close(self) -> None:
        """Finish the submitted work, then stop the workers."""
        self._closing = True
        self.scheduler.lift_windows()

    def terminate(self) -> None:
        """Stop the workers now; tasks not done yet get a cancelled outcome."""
        self._closing = self._terminating = True
        self.wakeup()

    def kill_workers(self, sig: int, why: str) -> None:
        """Stop every worker now with signal ``sig`` and start none again (any thread).

        Queued tasks are cancelled; the tasks the workers held fail with ``WorkerLostError``
        (``why`` says who stopped them). Returns once the workers were signalled (bounded),
        not when they have exited: ``join`` waits for that.
        """
        self._kill = (sig, why)
        self._closing = self._terminating = True
        self.wakeup()
        if threading.current_thread() is not getattr(self, "thread", None):
            self._signalled.wait(5)

    def stop_job(self, job_id: int) -> bool:
        """``terminate()`` of a future or result: see ``Scheduler.stop_job`` (any thread)."""
        return self.scheduler.stop_job(job_id)

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in list(self.workers.values())]

    def demand(self) -> None:
        """After a submit (any thread): the stdlib's rule for starting workers. No worker
        idle (no finished task left that an earlier submit did not count on) and fewer
        than ``n``: one more, started by the dispatcher before this returns, as the
        stdlib's ``submit()`` starts it itself. Free once every worker runs."""
        if not self._on_demand or len(self.workers) >= self.n:
            return
        with self._waiters_lock:
            if self._credits > 0:
                self._credits -= 1
                return
            if self._wanted >= self.n:
                return
            self._wanted += 1
        self._after_fill(cancel=False)

    def cancel_unstarted(self) -> None:
        """``shutdown(cancel_futures=True)``: cancel every task that has not started.

        The dispatcher first hands each worker what it can take now (starting workers on
        demand), as the stdlib's executor has by then moved tasks to its call queue: those
        are running, and finish. Returns once the rest is cancelled.
        """
        if not self._after_fill(cancel=True):
            self.scheduler.cancel_pending()  # no dispatcher (any more) to do it

    def _after_fill(self, cancel: bool, timeout: float = 5.0) -> bool:
        """Wait until the dispatcher has done a ``_fill`` (then, with ``cancel``, cancelled
        the tasks still unsent). False if no dispatcher did (none runs, or we are it)."""
        if threading.current_thread() is self.thread:
            return False
        done = threading.Event()
        with self._waiters_lock:
            if self._loop_done:
                return False
            self._waiters.append((done, cancel))
        self.wakeup()
        return done.wait(timeout)

    def _answer_waiters(self, start: bool = True) -> None:
        with self._waiters_lock:
            waiting, self._waiters = self._waiters, []
        if start and self._start_wanted():
            self._fill()
        if any(cancel for _, cancel in waiting):
            self.scheduler.cancel_pending()
        for done, _ in waiting:
            done.set()

    # ---------------------------------------------------------------- workers

    def _start_workers(self, n: int) -> None:
        """Start the workers of slots ``0..n-1``: every process first, then watch them.

        If one cannot start, those started are stopped again (nothing is left) and the error
        propagates: the pool cannot be made. Processes come from ``ctx.Process``, whatever
        the context is (as the stdlib's ``Pool(context=)``).
        """
        launched: list[tuple[int, Any, socket.socket]] = []
        try:
            for slot in range(n):
                launched.append((slot, *self._launch(slot, [s.fileno() for *_, s in launched])))
            while launched:
                self._watch(*launched.pop(0))  # on error it stops its own worker
        except BaseException:
            starts.stop_unwatched([proc for _, proc, _ in launched], [s for *_, s in launched])
            raise

    def _start_worker(self, slot: int) -> None:
        """Start the worker of ``slot``; on any error, nothing of it is left (fds, process)."""
        self._watch(slot, *self._launch(slot))

    def _launch(self, slot: int, extra_fds: list[int] | tuple = ()) -> tuple[Any, socket.socket]:
        """Start the process of ``slot``: (process, our end of its socket). On any error,
        nothing of it is left. ``extra_fds``: more fds of ours a forked worker must close."""
        sel = self.sel
        assert sel is not None and self.slots is not None
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = None
        try:
            for sock in (parent_sock, child_sock):
                starts.widen(sock)
            close_fds: tuple[int, ...] = ()
            if self._fork:
                # A forked worker inherits every fd of ours; close the pool's private ones.
                close_fds = (self._wake_r, self._wake_w, parent_sock.fileno(), sel.fileno(),
                             *(w.sock.fileno() for w in self.workers.values()), *extra_fds)
            self.slots.reset(slot)
            proc = self.ctx.Process(
                target=worker.main,
                args=(child_sock, self.slots, slot, self.initializer, self.initargs,
                      self.maxtasks, close_fds),
                name=f"{self.name}-{next(self._counter)}", daemon=self._daemon)
            try:
                proc.start()
            finally:
                child_sock.close()
            parent_sock.setblocking(False)
        except BaseException:
            child_sock.close()
            parent_sock.close()
            if proc is not None and getattr(proc, "_popen", None) is not None:
                starts.reap_now(proc)  # started: stop it again
            raise
        return proc, parent_sock

    def _watch(self, slot: int, proc: Any, parent_sock: socket.socket) -> None:
        """Make the started worker ``proc`` of ``slot`` one of the dispatcher's; on any
        error it is stopped again and nothing of it is left."""
        sel = self.sel
        assert sel is not None
        registered = []
        try:
            w = WorkerHandle(slot, proc, parent_sock)
            for key, data in ((parent_sock, (_SOCK, w)), (proc.sentinel, (_SENTINEL, w))):
                sel.register(key, selectors.EVENT_READ, data)  # epoll: ENOMEM, ENOSPC
                registered.append(key)
        except BaseException:
            for key in registered:
                sel.unregister(key)
            parent_sock.close()
            starts.reap_now(proc)
            raise
        self.workers[slot] = w

    def _fill(self) -> None:
        """Give every worker with spare capacity a batch: first one to each idle worker; then
        (on demand, up to ``n``) new workers for the batches left; then a second batch to
        the workers that may take one (see _depth)."""
        workers = [w for w in list(self.workers.values()) if not (w.dead or w.eof)]
        for w in workers:
            if not w.inflight and not self._feed(w, 1):
                return  # no work left for now
        sched = self.scheduler
        while (self._on_demand and len(self.workers) < self.n and not self.starts.slots
               and not self._terminating):
            # The batch first, the worker then: no worker is started for nothing.
            batch = sched.next_batch(None, self.maxtasks)
            if batch is None:
                return
            slot = min(set(range(self.n)) - self.workers.keys())
            if not self._try_start(slot):  # retried later (_start_failed): run it elsewhere
                sched.worker_lost([batch])
                break
            w = self.workers[slot]
            self._send(w, batch)
            workers.append(w)
            with self._waiters_lock:
                self._wanted = max(self._wanted, len(self.workers))
        for w in workers:
            if not self._feed(w):
                return

    def _start_wanted(self) -> bool:
        """Start workers until there are as many as the submits asked for (see demand)."""
        started = False
        while (len(self.workers) < min(self._wanted, self.n) and not self.starts.slots
               and not self._terminating and not (self._closing and self.scheduler.idle())):
            if not self._try_start(min(set(range(self.n)) - self.workers.keys())):
                break
            started = True
        return started

    def _feed(self, w: WorkerHandle, depth: int = 2) -> bool:
        """Send ``w`` batches until it has all it can take, at most ``depth`` (True), or
        there is no work for it now (False)."""
        sched = self.scheduler
        while len(w.inflight) < min(depth, self._depth(w)):
            limit = None
            if self.maxtasks:
                limit = self.maxtasks - w.sent
                if limit <= 0:
                    break
            batch = sched.next_batch(w, limit)
            if batch is None:
                return False
            self._send(w, batch)
        return True

    def _send(self, w: WorkerHandle, batch: Batch) -> None:
        sched = self.scheduler
        try:
            message = sched.batch_message(batch, w.known_fids)
            payload, fds = wire.dumps(message)
        except Exception as e:
            sched.unsendable(batch, e, wire.pickling_error)
            return
        learn_funcs(w.known_fids, message[1])  # only now: the worker gets them
        w.inflight.append(batch)
        w.sent += len(batch)
        w.writer.push(payload, fds)
        self._flush(w)

    def _depth(self, w: WorkerHandle) -> int:
        # A second batch queued behind the running one hides the round trip, but only pays
        # when batches are short; long ones would wait behind it while a worker idles. Near
        # the end of a job too, a queued batch could wait while another worker has nothing.
        if not w.inflight:
            return 1
        last = w.inflight[-1]
        if last.est_ns is None or last.est_ns >= _PREFETCH_NS:
            return 1
        job = last.job
        if job is not None and job.size_hint is not None and \
                job.size_hint - job.next_index < self.n * len(last):
            return 1
        return 2

    def _flush(self, w: WorkerHandle) -> None:
        try:
            done = w.writer.flush()
        except OSError:
            return  # the worker died; its sentinel will tell
        if done == (not w.writing):
            return  # EVENT_WRITE is registered exactly when output is pending: no change
        w.writing = not done
        events = selectors.EVENT_READ | (0 if done else selectors.EVENT_WRITE)
        try:
            self.sel.modify(w.sock, events, (_SOCK, w))
        except (KeyError, ValueError):
            pass

    # ---------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # a bug here must not hang callers: fail everything
            import traceback

            traceback.print_exc()
            self.scheduler.fail_all(_errors.BrokenProcessPool(f"the pool's dispatcher failed: {e!r}"))
        finally:
            self._shutdown_workers()
            with self._waiters_lock:
                self._loop_done = True
            self._answer_waiters(start=False)

    def _loop(self) -> None:
        sched = self.scheduler
        while True:
            if self._terminating:
                sched.cancel_pending()
                return
            if not self._closing or not sched.idle():
                self._fill()
            if self._waiters:
                self._answer_waiters()
            # Checked again after _fill: it can finish the last job itself (a job learns that
            # its input is exhausted there), and nothing would wake us up after that.
            if self._closing and sched.idle():
                return
            for key, mask in self.sel.select(self._timer()):
                kind, w = key.data
                if kind == _WAKE:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    # Clear only after draining: a wakeup written meanwhile must not be lost.
                    self._wake_pending = False
                elif kind == _SOCK:
                    if mask & selectors.EVENT_READ:
                        self._read(w)
                    if mask & selectors.EVENT_WRITE and not w.dead:
                        self._flush(w)
                elif not w.dead:
                    self._on_death(w)
            if sched.running_jobs_with_timeout():
                self._check_timeouts()
            if sched.stopping:
                self._check_stops()
            if self.starts.slots:
                self._retry_starts()

    def _read(self, w: WorkerHandle) -> None:
        try:
            frames = w.reader.read()
        except (EOFError, OSError):
            w.eof = True
            try:
                self.sel.unregister(w.sock)
            except (KeyError, ValueError):
                pass
            return
        for payload, fds in frames:
            try:
                msg = wire.loads(payload, fds)
            except Exception as e:
                self._on_unloadable(w, e)
                continue
            self._on_message(w, msg)

    def _on_unloadable(self, w: WorkerHandle, exc: Exception) -> None:
        # A message the worker could pickle but we can't unpickle (an exception whose
        # __init__ wants other arguments than it passes on, a class we can't import): its
        # tasks fail with that error instead of the dispatcher (and so the pool) failing.
        if self.slots.read(w.slot)[2] == 0:  # it never started a batch: its init message
            err = _errors.BrokenProcessPool(
                f"the pool's initializer failed in worker pid {w.pid}, and its exception "
                f"cannot be unpickled in the parent ({exc!r}); the pool cannot run tasks")
            err.__cause__ = exc
            self.scheduler.fail_all(err)
            self._closing = True
            return
        if not w.inflight:
            return
        batch = w.inflight.popleft()  # a worker answers its batches in order
        w.completed += 1
        from .._engine.broken import ResultUnpicklingError

        err = ResultUnpicklingError(
            f"the outcome of this task, sent by worker pid {w.pid}, cannot be unpickled in "
            f"the parent: {type(exc).__name__}: {worker.safe_str(exc)}. Only this task "
            "failed; make its result picklable (its class importable here, its __reduce__ "
            "or __setstate__ not raising).")
        err.__cause__ = exc
        self.scheduler.outcomes_unloadable(batch, err)

    def _on_message(self, w: WorkerHandle, msg: Any) -> None:
        if msg[0] == "init":
            err = _errors.BrokenProcessPool(
                f"the pool's initializer raised {type(msg[1]).__name__} in worker pid {w.pid}; "
                "the pool cannot run tasks. Fix the initializer (its traceback is the cause).")
            err.__cause__ = msg[1]
            self.scheduler.fail_all(err)
            self._closing = True
            return
        if msg[0] == "unloadable":
            # The worker could not unpickle its oldest batch (see worker.main); it exits now,
            # and its other batches run elsewhere. Its tasks fail with the worker's error
            # (each run again alone first if there were several: only a culprit fails).
            if w.inflight:
                w.completed += 1  # it did take part: its exit is no start-up failure
                self.scheduler.outcomes_unloadable(w.inflight.popleft(), msg[1])
            return
        batch_id, values, errors, elapsed = msg
        if w.inflight and w.inflight[0].id == batch_id:
            w.inflight.popleft()
        else:
            w.inflight = collections.deque(b for b in w.inflight if b.id != batch_id)
        w.completed += 1
        if self._startup_failures or not _ERRORS_LOADED:
            self._startup_failures = 0
            _load_errors()
        if self._on_demand and len(self.workers) < self.n:
            with self._waiters_lock:
                self._credits += len(values)  # so many workers were idle (stdlib's rule)
        self.scheduler.complete(batch_id, values, errors, elapsed, w.pid)

    def _on_death(self, w: WorkerHandle) -> None:
        if self._forkserver and self._lives_on(w):
            return
        # Results it sent before dying still count: read the socket to its end first.
        while not w.eof and wire_has_data(w.sock):
            self._read(w)
        w.dead = True
        running = self.slots.read(w.slot)
        w.proc.join(5)
        exitcode = w.proc.exitcode
        if getattr(w.proc._popen, "exit_unknown", False):
            exitcode = _errors.EXIT_UNKNOWN  # its fork server died first: nobody knows it
        report = _child_error(w.proc) if exitcode else None  # before close() ends the popen
        for key in (w.sock, w.proc.sentinel):
            try:
                self.sel.unregister(key)
            except (KeyError, ValueError):
                pass
        w.reader.close()
        w.writer.close()
        w.sock.close()
        w.proc.close() if exitcode is not None else None
        del self.workers[w.slot]
        if w.inflight:
            self.scheduler.worker_lost(list(w.inflight), (running[0], running[1]), w.pid,
                                       exitcode, w.timed_out, stopped=w.stopped)
            w.inflight.clear()
        if (exitcode != 0 and w.completed == 0 and running[2] == 0
                and w.timed_out is None and not w.stopped and not self._terminating):
            # It died before starting any batch: it can't even start (e.g. the main module
            # or the initializer crashes it). Don't respawn forever.
            self._startup_failures += 1
            line, at_start = report or ("", False)
            said = f": {line}" if line else ""
            if at_start and not line.startswith(_TRANSIENT_START_ERRORS):
                # It could not even prepare (import the parent's main module, unpickle its
                # process): every new worker would fail the same way, and print it again.
                self.scheduler.fail_all(_errors.BrokenProcessPool(
                    f"a pool worker could not start: pid {w.pid} {describe_exit(exitcode)} "
                    f"before running any task{said}. The pool cannot run tasks; fix that "
                    "error (the worker's traceback is above: typically the main module fails "
                    "to import in a new interpreter, or starts processes at import time "
                    "without the `if __name__ == '__main__':` guard)"))
                self._closing = True
            elif self._startup_failures >= _STARTUP_FAILURES_LIMIT * self.n:
                self.scheduler.fail_all(_errors.BrokenProcessPool(
                    f"pool workers keep dying before running any task (the last, pid {w.pid}, "
                    f"{describe_exit(exitcode)}{said}); check the initializer and what the "
                    "workers import (its error output is above)"))
                self._closing = True
        if not self._terminating and not (self._closing and self.scheduler.idle()):
            if self.starts.slots:  # starting workers fails now: wait for the next attempt
                self.starts.slots.add(w.slot)
            else:
                self._try_start(w.slot)

    def _lives_on(self, w: WorkerHandle) -> bool:
        """The sentinel of a forkserver worker fired: was it its fork server that died? The
        worker then lives on (reparented to init) and keeps its tasks; its Popen re-arms the
        sentinel to watch the worker itself (same fd, another file: register it again)."""
        sel = self.sel
        assert sel is not None
        try:  # before the Popen swaps the file under the fd, or epoll would keep the old one
            sel.unregister(w.proc.sentinel)
        except (KeyError, ValueError):
            pass
        if w.proc.exitcode is not None:
            return False
        sel.register(w.proc.sentinel, selectors.EVENT_READ, (_SENTINEL, w))
        return True

    # ---------------------------------------------------------------- failed starts

    def _try_start(self, slot: int) -> bool:
        try:
            self._start_worker(slot)
        except Exception as e:
            self._start_failed(slot, e)
            return False
        return True

    def _start_failed(self, slot: int, exc: Exception) -> None:
        """A replacement worker could not start (out of fds, memory, processes; a dead fork
        server), and nothing of it is left. Try again after a back-off (the selector's
        timeout: the other workers go on meanwhile); only once no worker at all has run for
        ``starts.STALL_LIMIT`` seconds do the tasks waiting for one fail."""
        retry = self.starts
        alone = retry.failed(slot, exc, len(self.workers))
        if not retry.warned:
            retry.warned = True
            starts.warn(f"polyproc: could not start a pool worker: {starts.describe(exc)}; "
                        f"the pool tries again (running on {len(self.workers)} of {self.n} "
                        "workers meanwhile)")
        if self.workers or alone < (starts.STALL_LIMIT if starts.is_transient(exc) else 0):
            return
        self.scheduler.cancel_pending(starts.stall_error(
            f"no pool worker could be started for {alone:.0f} s: {starts.describe(exc)}. "
            "This task was not run; the pool keeps trying to start workers, and runs the "
            "tasks it is given once one starts", exc))

    def _retry_starts(self) -> None:
        retry = self.starts
        if self._terminating or (self._closing and self.scheduler.idle()):
            retry.slots.clear()
            return
        if not retry.due():
            return
        for slot in sorted(retry.slots):
            retry.slots.discard(slot)
            if not self._try_start(slot):
                return  # still failing: _start_failed set the next attempt
        retry.recovered()

    # ---------------------------------------------------------------- timeouts

    def _timer(self) -> float | None:
        sched = self.scheduler
        timer = 0.02 if sched.stopping or sched.running_jobs_with_timeout() else None
        retry = self.starts.timeout()
        return timer if retry is None else retry if timer is None else min(timer, retry)

    def _check_timeouts(self) -> None:
        now = time.monotonic_ns()
        for w in list(self.workers.values()):
            if w.dead or not w.inflight or w.timed_out is not None or w.stopped:
                continue
            batch_id, pos, start_ns, _pid = self.slots.read(w.slot)
            if pos < 0:
                continue
            for batch in w.inflight:
                if batch.id == batch_id:
                    break
            else:
                continue
            if pos >= len(batch):
                continue
            timeout = batch.job_at(pos).timeout
            if timeout is not None and now - start_ns > timeout * 1e9:
                w.timed_out = (batch_id, pos)
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _check_stops(self) -> None:
        """Kill each worker running a task of a job being stopped (``terminate()``), as an
        overdue task's worker is; its other tasks run again elsewhere. A stopped task queued
        behind others on a worker is looked for again until that worker reaches it."""
        sched = self.scheduler
        with sched.lock:
            sched.stopping = [job for job in sched.stopping if not job.finished]
            if not sched.stopping:
                return
        for w in list(self.workers.values()):
            if w.dead or w.stopped or w.timed_out is not None or not w.inflight:
                continue
            batch_id, pos, _start_ns, _pid = self.slots.read(w.slot)
            for batch in w.inflight:
                if batch.id == batch_id:
                    break
            else:
                continue
            if pos < 0:
                # A batch run without positions (one map job's tasks) runs a stopped task
                # throughout; a precise one is between tasks (starting, or sending its
                # outcomes, which arrive cancelled): look again later.
                if batch.precise or batch.job is None or not batch.job.stopping:
                    continue
            elif pos >= len(batch) or not batch.job_at(pos).stopping:
                continue
            w.stopped = True
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # ---------------------------------------------------------------- shutdown

    def _shutdown_workers(self) -> None:
        self.starts.slots.clear()
        workers = list(self.workers.values())
        sig = signal.SIGTERM if self._kill is None else self._kill[0]
        for w in workers:
            try:
                if self._terminating:
                    w.proc._popen._send_signal(sig)
                    if sig != signal.SIGKILL:  # a stopped (SIGSTOP) worker acts on it now
                        w.proc._popen._send_signal(signal.SIGCONT)
                else:
                    w.sock.setblocking(True)
                    wire.send(w.sock, wire.dumps(worker.STOP)[0])
            except (OSError, ValueError, AttributeError):
                pass
        self._signalled.set()
        deadline = time.monotonic() + 5
        for w in workers:
            try:
                w.proc.join(max(0.0, deadline - time.monotonic()))
                if w.proc.exitcode is None:
                    w.proc.kill()
                    w.proc.join(5)
            except (OSError, ValueError, AssertionError):
                pass
            w.reader.close()
            w.writer.close()
            try:
                w.sock.close()
            except OSError:
                pass
        self.workers.clear()
        # Anything still waiting (terminate, or a dispatcher failure) gets its outcome now.
        if not self.scheduler.idle():
            self.scheduler.fail_all(_terminated_error() if self._kill is None
                                    else _killed_error(self._kill[1]))
        try:
            self.sel.close() if self.sel is not None else None
        except OSError:
            pass
        with self._wake_lock:
            self._wake_pending = True
            fds, self._wake_w = (self._wake_r, self._wake_w), -1
        util.close_fds(*(fd for fd in fds if fd >= 0))
        if self.slots is not None:
            self.slots.close()  # its memfd: one fd per pool otherwise, never closed


#: A worker that failed to start with one of these may well start next time (the machine was
#: short of something): only failing ``_STARTUP_FAILURES_LIMIT`` times in a row breaks the pool.
_TRANSIENT_START_ERRORS = ("MemoryError", "OSError", "BlockingIOError", "InterruptedError")


def _child_error(proc: Any) -> tuple[str, bool] | None:
    """What a dead worker reported as its error (see ``Popen.child_error``), if anything."""
    try:
        return proc._popen.child_error()
    except Exception:  # a custom context's process, or nothing to read
        return None


_ERRORS_LOADED = False


def _load_errors() -> None:
    # The errors a worker's death needs (they import concurrent.futures) are loaded once the
    # pool has done its first work: not on a first Pool()'s path, and not when it may be too
    # late (a death while the process has no fd left cannot open a module's file).
    global _ERRORS_LOADED
    from .._engine import broken  # noqa: F401

    _ERRORS_LOADED = True


def _terminated_error() -> BaseException:
    from concurrent.futures import CancelledError

    return CancelledError("the pool was terminated before this task finished")


def _killed_error(why: str) -> BaseException:
    from .._engine.broken import WorkerLostError

    return WorkerLostError(f"the pool's workers were stopped by {why} while this task ran "
                           "on one of them; it did not finish")


def wire_has_data(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False
