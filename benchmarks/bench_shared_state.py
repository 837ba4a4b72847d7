"""Shared-state benchmark (issue #3): Queue throughput, Lock and Value('i') under contention.

Run: ``python benchmarks/bench_shared_state.py [--quick] [--json out.json]``
(stdlib ``multiprocessing`` against ``polyproc``; see benchmarks/README.md for reading the table).

Children are forked (their start-up is not timed). In the two-process cases both children
wait on the implementation's own ``Event``, then each times its own loop with
``time.perf_counter`` (CLOCK_MONOTONIC, comparable between processes); the rate is all the
operations over the span from the first start to the last end.
"""

from __future__ import annotations

import time

from _harness import Benchmark
from bench_queues import queue_big, queue_small

BENCH = Benchmark(
    "shared state: Queue, Lock, Value between processes",
    impls={"stdlib": "multiprocessing", "polyproc": "polyproc"},
    module="bench_shared_state",
)

METHOD = "fork"
PROCS = 2


# -- loops, run in this process or in children (module level: importable by name) ----------


def lock_loop(lock, count: int) -> None:
    acquire, release = lock.acquire, lock.release
    for _ in range(count):
        acquire()
        release()


def value_loop(value, count: int) -> None:
    lock = value.get_lock()
    for _ in range(count):
        with lock:
            value.value += 1


def _timed_child(loop, obj, count: int, start, results) -> None:
    start.wait()
    t0 = time.perf_counter()
    loop(obj, count)
    results.put((t0, time.perf_counter()))


# -- cases -------------------------------------------------------------------------------------


def _single(loop, obj, count: int, chunks: int = 5) -> list[float]:
    loop(obj, count // 10)  # warm-up
    samples = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        loop(obj, count)
        samples.append(count / (time.perf_counter() - t0))
    return samples


def _contended(mp, loop, obj, count: int) -> float:
    ctx = mp.get_context(METHOD)
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_timed_child, args=(loop, obj, count, start, results))
             for _ in range(PROCS)]
    for p in procs:
        p.start()
    try:
        time.sleep(0.2)  # let both children reach start.wait()
        start.set()
        spans = [results.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(60)
            if p.exitcode is None:
                p.kill()
                p.join()
    for p in procs:
        if p.exitcode != 0:
            raise RuntimeError(f"child exited with {p.exitcode}")
    first = min(t0 for t0, _ in spans)
    last = max(t1 for _, t1 in spans)
    return PROCS * count / (last - first)


def lock_single(mp, quick: bool) -> list[float]:
    """Acquire+release pairs per second of one Lock in one process (median of 5 chunks)."""
    return _single(lock_loop, mp.get_context(METHOD).Lock(), 100_000 if quick else 1_000_000)


def lock_contended(mp, quick: bool) -> list[float]:
    """Acquire+release pairs per second, all processes together: 2 children share one Lock."""
    count = 200_000 if quick else 2_000_000
    ctx = mp.get_context(METHOD)
    return [_contended(mp, lock_loop, ctx.Lock(), count) for _ in range(1 if quick else 3)]


def value_single(mp, quick: bool) -> list[float]:
    """``with v.get_lock(): v.value += 1`` per second on a ``Value('i')``, one process."""
    count = 20_000 if quick else 200_000
    value = mp.get_context(METHOD).Value("i", 0)
    samples = _single(value_loop, value, count)
    expected = count // 10 + 5 * count
    if value.value != expected:
        raise RuntimeError(f"value is {value.value}, expected {expected}")
    return samples


def value_contended(mp, quick: bool) -> list[float]:
    """The same increments per second, 2 children on one ``Value('i')`` (final value checked:
    a lost update means the lock does not exclude)."""
    count = 20_000 if quick else 100_000
    ctx = mp.get_context(METHOD)
    samples = []
    for _ in range(1 if quick else 3):
        value = ctx.Value("i", 0)
        samples.append(_contended(mp, value_loop, value, count))
        if value.value != PROCS * count:
            raise RuntimeError(f"value is {value.value}, expected {PROCS * count}: lost updates")
    return samples


BENCH.add_case("Queue small messages", queue_small, kind="throughput", unit="msgs/s")
BENCH.add_case("Queue 1 MiB bytes", queue_big, kind="throughput", unit="MB/s", rss=True)
BENCH.add_case("Lock acquire+release, 1 process", lock_single, kind="throughput", unit="ops/s")
BENCH.add_case("Lock acquire+release, 2 processes contending", lock_contended,
               kind="throughput", unit="ops/s")
BENCH.add_case("Value('i') += 1 under its lock, 1 process", value_single, kind="throughput",
               unit="ops/s")
BENCH.add_case("Value('i') += 1 under its lock, 2 processes", value_contended,
               kind="throughput", unit="ops/s")


if __name__ == "__main__":
    raise SystemExit(BENCH.main())
