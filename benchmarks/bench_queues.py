"""Queue benchmark: throughput of Queue and SimpleQueue between two processes, and latency.

Run: ``python benchmarks/bench_queues.py [--quick] [--json out.json]``
(stdlib ``multiprocessing`` against ``polyproc``; see benchmarks/README.md for reading the table).

Every case uses a forked child (its start-up is not timed) and the implementation's own
queues for everything, including the "done" signal.
"""

from __future__ import annotations

import time

from _harness import Benchmark

BENCH = Benchmark(
    "queues: Queue / SimpleQueue between two processes",
    impls={"stdlib": "multiprocessing", "polyproc": "polyproc"},
    module="bench_queues",
)

MIB = 1 << 20
SMALL_OBJECT = ("ping", 12345, 3.5, None)
METHOD = "fork"


# -- functions run in child processes (module level: importable by name) ---------------------


def sink(q, done, rounds: int, count: int) -> None:
    """*rounds* times: get *count* messages, then report how many bytes/items arrived."""
    done.put("ready")
    for _ in range(rounds):
        total = 0
        for _ in range(count):
            x = q.get()
            total += len(x) if isinstance(x, bytes) else 1
        done.put(total)


def echo(inq, outq) -> None:
    """Put back every object got until ``None`` arrives."""
    while True:
        x = inq.get()
        outq.put(x)
        if x is None:
            break


# -- cases ------------------------------------------------------------------------------------


def _throughput(mp, simple: bool, payload, rounds: int, count: int, unit_size: float
                ) -> list[float]:
    ctx = mp.get_context(METHOD)
    q = ctx.SimpleQueue() if simple else ctx.Queue()
    done = ctx.Queue()
    p = ctx.Process(target=sink, args=(q, done, rounds + 1, count))
    p.start()
    try:
        if done.get(timeout=60) != "ready":
            raise RuntimeError("child did not start")
        expected = count * (len(payload) if isinstance(payload, bytes) else 1)
        put = q.put
        samples = []
        for rnd in range(rounds + 1):  # the first round is a warm-up
            t0 = time.perf_counter()
            for _ in range(count):
                put(payload)
            received = done.get(timeout=300)
            elapsed = time.perf_counter() - t0
            if received != expected:
                raise RuntimeError(f"child received {received}, expected {expected}")
            if rnd:
                samples.append(count * unit_size / elapsed)
    finally:
        p.join(60)
        if p.exitcode is None:
            p.kill()
            p.join()
    return samples


def queue_small(mp, quick: bool, simple: bool = False) -> list[float]:
    """Messages per second: a small tuple put by the parent, got by the child."""
    rounds, count = (2, 20_000) if quick else (5, 100_000)
    return _throughput(mp, simple, SMALL_OBJECT, rounds, count, 1.0)


def queue_big(mp, quick: bool) -> list[float]:
    """MB/s (10**6 bytes/s): 1 MiB ``bytes`` objects put by the parent, got by the child."""
    rounds, count = (2, 40) if quick else (5, 150)
    payload = bytes(range(256)) * (MIB // 256)
    return _throughput(mp, False, payload, rounds, count, MIB / 1e6)


def round_trip(mp, quick: bool) -> list[float]:
    """Microseconds per put + get round trip through an echoing child (two queues)."""
    total = 2_000 if quick else 20_000
    chunks = 10
    ctx = mp.get_context(METHOD)
    inq, outq = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=echo, args=(inq, outq))
    p.start()
    samples = []
    try:
        for _ in range(200):  # warm-up
            inq.put(SMALL_OBJECT)
            outq.get()
        per_chunk = total // chunks
        for _ in range(chunks):
            t0 = time.perf_counter()
            for _ in range(per_chunk):
                inq.put(SMALL_OBJECT)
                outq.get()
            samples.append((time.perf_counter() - t0) / per_chunk * 1e6)
    finally:
        inq.put(None)
        outq.get(timeout=60)
        p.join(60)
    return samples


BENCH.add_case("Queue small messages", queue_small, kind="throughput", unit="msgs/s")
BENCH.add_case("Queue 1 MiB bytes", queue_big, kind="throughput", unit="MB/s", rss=True)
BENCH.add_case("SimpleQueue small messages", queue_small, kind="throughput", unit="msgs/s",
               simple=True)
BENCH.add_case("Queue round trip, small object", round_trip, kind="latency", unit="µs")


if __name__ == "__main__":
    raise SystemExit(BENCH.main())
