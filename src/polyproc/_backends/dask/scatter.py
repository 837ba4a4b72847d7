"""The client's cache of large arguments scattered to Dask workers, per call.

A ``bytes``, ``bytearray`` or numpy array argument of at least ``threshold`` bytes is sent
once (``client.scatter``) straight to the worker that needs it, and the batch carries a
reference (its Dask key). The same object repeated across the tasks of one call travels once;
an object no batch in flight uses stays cached (``KEEP`` per call, least recently used first
out) in case later batches repeat it, and everything of a call is released when it finishes.
"""

from __future__ import annotations

import collections
import sys
from typing import Any

from ..._engine.jobs import Batch, Job

#: Unused scattered objects kept per call (LRU) so an object repeated later is not re-sent.
KEEP = 8


class Entry:
    """An argument scattered to the cluster, reused by the tasks of one call."""

    __slots__ = ("obj", "future", "key", "worker", "users")

    def __init__(self, obj: Any, future: Any, worker: str) -> None:
        self.obj = obj  # keeps id(obj) meaning this object while the entry lives
        self.future = future
        self.key = str(future.key)
        self.worker = worker
        self.users = 0  # batches in flight that refer to it


class ScatterCache:
    """Scattered arguments by call (job id) and object id; ``stats`` counts what is sent."""

    def __init__(self, client: Any, threshold: int | None, stats: collections.Counter) -> None:
        self.client = client
        self.threshold = threshold
        self.stats = stats
        self._jobs: dict[int, tuple[Job, collections.OrderedDict[int, Entry]]] = {}

    def use(self, batch: Batch, address: str) -> list[Entry]:
        """Scatter the large arguments of ``batch`` to worker ``address`` (those not there
        yet) and count the batch as a user of each; their entries, for ``release``."""
        if self.threshold is None:
            return []
        big = _big_arguments(batch, self.threshold)
        if not big:
            return []
        entries = []
        for obj in big:
            job = batch.job if batch.job is not None else _job_of(batch, obj)
            holder = self._jobs.get(job.id)
            if holder is None:
                holder = self._jobs[job.id] = (job, collections.OrderedDict())
            cache = holder[1]
            entry = cache.get(id(obj))
            if entry is not None and entry.future.status != "finished":  # its data was lost
                del cache[id(obj)]
                if entry.users <= 0:
                    entry.future.release()
                entry = None
            if entry is None:
                future = self.client.scatter(obj, workers=[address], hash=False)
                entry = cache[id(obj)] = Entry(obj, future, address)
                self.stats["scattered_objects"] += 1
            cache.move_to_end(id(obj))
            entry.users += 1
            entries.append(entry)
        return entries

    def unsent(self, entries: list[Entry]) -> None:
        """The batch that ``use`` scattered ``entries`` for was not sent after all."""
        for entry in entries:
            entry.users -= 1

    def release(self, batch: Batch, entries: list[Entry]) -> None:
        """``batch`` is done with ``entries``: keep at most ``KEEP`` unused ones per call."""
        if not entries:
            return
        for entry in entries:
            entry.users -= 1
        for job_id in _jobs_of(batch):
            holder = self._jobs.get(job_id)
            if holder is None:
                continue
            cache = holder[1]
            unused = [oid for oid, e in cache.items() if e.users <= 0]
            for oid in unused[:max(0, len(unused) - KEEP)]:
                cache.pop(oid).future.release()

    def drop_finished(self) -> None:
        """Release everything of the calls that are finished."""
        for job_id, (job, cache) in list(self._jobs.items()):
            if job.finished and not any(e.users > 0 for e in cache.values()):
                del self._jobs[job_id]
                for entry in cache.values():
                    entry.future.release()

    def forget_worker(self, address: str) -> None:
        """Worker ``address`` is gone, and its data may be gone with it: scatter again."""
        for _job, cache in self._jobs.values():
            for oid, entry in list(cache.items()):
                if entry.worker == address:
                    del cache[oid]
                    if not entry.users:
                        entry.future.release()

    def clear(self) -> None:
        """Release everything (the pool is shutting down)."""
        for _job, cache in self._jobs.values():
            for entry in cache.values():
                try:
                    entry.future.release()
                except Exception:
                    pass
        self._jobs.clear()


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
