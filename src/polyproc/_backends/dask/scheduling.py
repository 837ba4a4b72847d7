"""The shared ``Scheduler`` as the Dask backend runs it: Dask-sized batches, Dask pickling.

No subclass: the scheduler takes what differs as parameters (see ``_engine/scheduler.py``).

* ``MAP_TARGET_NS`` and ``SINGLE_TARGET_NS``, 50 ms (the local engine: 16 ms): what a batch
  amortises here is a Dask task's round trip (client, scheduler, worker and back:
  milliseconds, against ~0.1 ms for a local worker), and with one batch in flight per worker
  thread a worker idles for that long between batches. 50 ms of work keeps that to a few
  percent. A pack of single calls (``apply``/``submit``) pays the same round trip, so it
  aims at the same work; its results wait at most ~50 ms for the rest of their pack, which
  is small next to a Dask task's own latency.
* ``TAIL_NS`` = ``MAP_TARGET_NS``: no guided tail. Each smaller batch near a job's end costs
  one more round trip, more than the imbalance it removes (at most one batch per worker).
* ``dumps``: functions go with ``pickling.dumps`` (cloudpickle for what a worker cannot
  import, e.g. the client's ``__main__``), as everything else sent to Dask workers.
"""

from __future__ import annotations

from collections.abc import Callable

from ..._engine.scheduler import Scheduler
from .pickling import dumps

MAP_TARGET_NS = 50_000_000
SINGLE_TARGET_NS = 50_000_000
TAIL_NS = MAP_TARGET_NS


def make_scheduler(n_workers: int, wakeup: Callable[[], None]) -> Scheduler:
    """The scheduler of one Dask pool."""
    return Scheduler(n_workers, wakeup, map_target_ns=MAP_TARGET_NS,
                     single_target_ns=SINGLE_TARGET_NS, tail_ns=TAIL_NS, dumps=dumps)
