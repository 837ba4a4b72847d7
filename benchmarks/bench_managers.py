"""Manager benchmark: proxy call round trip, object creation, managed Queue throughput.

Run: ``python benchmarks/bench_managers.py [--quick] [--json out.json]``
(stdlib ``multiprocessing`` against ``polyproc``; see benchmarks/README.md for reading the table).

Every case starts a SyncManager with the fork start method (not timed) and measures from the
parent process; the Queue case adds a forked consumer child.
"""

from __future__ import annotations

import time

from _harness import Benchmark

BENCH = Benchmark(
    "managers: proxy calls and managed queues",
    impls={"stdlib": "multiprocessing", "polyproc": "polyproc"},
    module="bench_managers",
)

METHOD = "fork"
SMALL_OBJECT = ("ping", 12345, 3.5, None)


def _manager(mp, tcp: bool):
    from importlib import import_module

    managers = import_module(mp.__name__ + ".managers")
    address = ("127.0.0.1", 0) if tcp else None
    m = managers.SyncManager(address=address, ctx=mp.get_context(METHOD))
    m.start()
    return m


# -- functions run in child processes (module level) ----------------------------------------


def consume(q, done, rounds: int, count: int) -> None:
    """*rounds* times: get *count* items from the managed queue, then report."""
    done.put("ready")
    for _ in range(rounds):
        for _ in range(count):
            q.get()
        done.put(count)


# -- cases ------------------------------------------------------------------------------------


def setitem_round_trip(mp, quick: bool, tcp: bool = False) -> list[float]:
    """µs per ``d[k] = v`` on a managed dict (one request and one reply)."""
    total = 2_000 if quick else 20_000
    chunks = 10
    m = _manager(mp, tcp)
    try:
        d = m.dict()
        for i in range(500):  # warm-up (the connection is made here)
            d[i % 16] = i
        per_chunk = total // chunks
        samples = []
        for _ in range(chunks):
            t0 = time.perf_counter()
            for i in range(per_chunk):
                d[i & 15] = i
            samples.append((time.perf_counter() - t0) / per_chunk * 1e6)
        if d[(per_chunk - 1) & 15] != per_chunk - 1:
            raise RuntimeError("wrong value read back")
        return samples
    finally:
        m.shutdown()


def getitem_round_trip(mp, quick: bool) -> list[float]:
    """µs per ``d[k]`` returning a small tuple from a managed dict."""
    total = 2_000 if quick else 20_000
    chunks = 10
    m = _manager(mp, False)
    try:
        d = m.dict({i: SMALL_OBJECT for i in range(16)})
        for i in range(500):
            d[i & 15]
        per_chunk = total // chunks
        samples = []
        for _ in range(chunks):
            t0 = time.perf_counter()
            for i in range(per_chunk):
                d[i & 15]
            samples.append((time.perf_counter() - t0) / per_chunk * 1e6)
        return samples
    finally:
        m.shutdown()


def create_release(mp, quick: bool) -> list[float]:
    """µs to create a managed list and drop its proxy (the object is released)."""
    import gc

    total = 200 if quick else 1_000
    chunks = 5
    m = _manager(mp, False)
    try:
        m.list()
        per_chunk = total // chunks
        samples = []
        for _ in range(chunks):
            t0 = time.perf_counter()
            for _ in range(per_chunk):
                m.list([1, 2, 3])
            samples.append((time.perf_counter() - t0) / per_chunk * 1e6)
        gc.collect()
        return samples
    finally:
        m.shutdown()


def queue_throughput(mp, quick: bool) -> list[float]:
    """Items per second through a managed Queue: the parent puts, a forked child gets."""
    rounds, count = (2, 2_000) if quick else (4, 10_000)
    m = _manager(mp, False)
    ctx = mp.get_context(METHOD)
    try:
        q, done = m.Queue(), m.Queue()
        p = ctx.Process(target=consume, args=(q, done, rounds + 1, count))
        p.start()
        try:
            if done.get(timeout=60) != "ready":
                raise RuntimeError("consumer did not start")
            samples = []
            for rnd in range(rounds + 1):  # the first round is a warm-up
                t0 = time.perf_counter()
                for _ in range(count):
                    q.put(SMALL_OBJECT)
                if done.get(timeout=300) != count:
                    raise RuntimeError("consumer lost items")
                if rnd:
                    samples.append(count / (time.perf_counter() - t0))
            return samples
        finally:
            p.join(60)
            if p.exitcode is None:
                p.kill()
                p.join()
    finally:
        m.shutdown()


BENCH.add_case("proxy call d[k] = v (Unix socket)", setitem_round_trip, kind="latency",
               unit="µs")
BENCH.add_case("proxy call d[k] = v (TCP loopback)", setitem_round_trip, kind="latency",
               unit="µs", tcp=True)
BENCH.add_case("proxy call d[k] -> small tuple", getitem_round_trip, kind="latency", unit="µs")
BENCH.add_case("create + release m.list()", create_release, kind="latency", unit="µs")
BENCH.add_case("managed Queue put -> child get", queue_throughput, kind="throughput",
               unit="items/s")


if __name__ == "__main__":
    raise SystemExit(BENCH.main())
