"""The Dask backend: a pool's batches run as tasks on a Dask distributed cluster.

``polyproc.get_context('dask', address=None, **options)`` returns a ``DaskContext``; its
``Pool()`` and ``ProcessPoolExecutor()`` are polyproc's own Pool and executor (same methods,
same scheduler: adaptive chunking, retries, timeouts, one outcome per task) with this backend
in place of the local worker processes. See docs/dask.md.

The package, by concept:

* this module: the face, ``DaskContext`` (what works across machines, what cannot);
* ``scheduling.py``: the shared ``Scheduler``'s parameters on Dask (batch targets, pickler);
* ``pickling.py``: pickle / cloudpickle and scattered references, for both sides;
* ``worker.py``: the code Dask workers run (``run_batch``, one Dask task per batch), which
  imports nothing of the client side;
* ``driver.py``: ``DaskBackend``, the client-side driver thread (a ``Backend``), with
  ``scatter.py``, its cache of large arguments scattered to workers.

Only the dask context imports this package (and Dask workers, to run batches);
``distributed`` is imported when a context is made, the driver when a pool is.
"""

from __future__ import annotations

from typing import Any

from ...context import BaseContext

__all__ = ["DaskContext", "DaskBackend"]

EXTRA_HINT = "pip install 'polyproc[dask]'"


def import_distributed() -> Any:
    """``distributed``, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            f"polyproc's 'dask' context needs dask.distributed, which cannot be imported "
            f"({e}). Install it with: {EXTRA_HINT}") from e
    return distributed


def __getattr__(name: str) -> Any:
    if name == "DaskBackend":  # the driver, loaded when a pool needs it
        from .driver import DaskBackend

        return DaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        import_distributed()
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
                         maxtasksperchild: int | None, name: str = "PoolWorker") -> Any:
        """The backend of a pool or executor of this context (``_backends.base.make_backend``;
        ``name`` is unused: Dask names its workers)."""
        from .driver import DaskBackend

        return DaskBackend(self, processes, initializer, initargs, maxtasksperchild)

    def _connect(self, processes: int) -> tuple[Any, Any]:
        """A Dask client for one pool, and the embedded cluster it started (or None).

        The client is the pool's own (closed with it) unless ``client=`` was given.
        """
        distributed = import_distributed()
        if not hasattr(distributed.Future, "_result"):
            raise ImportError(f"this version of distributed ({distributed.__version__}) is "
                              f"not supported by polyproc; {EXTRA_HINT} installs one that is")
        if self.client is not None:
            return self.client, None
        options = dict(self.options)
        if self.address is not None:
            options.setdefault("set_as_default", False)
            return distributed.Client(self.address, **options), None
        cluster_opts = {"n_workers": processes, "threads_per_worker": 1,
                        "processes": True, "dashboard_address": "127.0.0.1:0"}
        cluster_opts.update(options)
        cluster = distributed.LocalCluster(**cluster_opts)
        try:
            client = distributed.Client(cluster, set_as_default=False, direct_to_workers=True)
        except BaseException:
            cluster.close()
            raise
        return client, cluster

    # -- what cannot work across machines
    def Process(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]  # noqa: N802 - none here: it raises
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
