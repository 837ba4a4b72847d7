"""Foundation benchmark: process start+join per start method, and Pipe latency/throughput.

Run: ``python benchmarks/bench_foundation.py [--quick] [--json out.json]``
(stdlib ``multiprocessing`` against ``polyproc``; see benchmarks/README.md for reading the table).
"""

from __future__ import annotations

import os
import time

from _harness import Benchmark

BENCH = Benchmark(
    "foundation: process start+join and Pipe",
    impls={"stdlib": "multiprocessing", "polyproc": "polyproc"},
    module="bench_foundation",
)

MIB = 1 << 20
SMALL_OBJECT = ("ping", 12345, 3.5, None)
#: Start method used for the Pipe cases' child (its start-up is not timed).
PIPE_METHOD = "fork"


# -- functions run in child processes (module level: spawn/forkserver import them by name) ----


def echo(conn) -> None:
    """Send back every object received until ``None`` arrives."""
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)
    conn.close()


def sink(conn, rounds: int, count: int, raw: bool) -> None:
    """*rounds* times: receive *count* messages, then send the number of bytes received."""
    for _ in range(rounds):
        total = 0
        for _ in range(count):
            total += len(conn.recv_bytes() if raw else conn.recv())
        conn.send(total)
    conn.close()


# -- cases ---------------------------------------------------------------------------------


def _start_join(ctx) -> float:
    # The target is a no-op from an already-imported module (os.getpid), so the child does
    # not import this script: the samples are the library's overhead, not import time.
    t0 = time.perf_counter()
    p = ctx.Process(target=os.getpid)
    p.start()
    p.join()
    elapsed = time.perf_counter() - t0
    if p.exitcode != 0:
        raise RuntimeError(f"child exited with {p.exitcode}")
    return elapsed


def start_join(mp, quick: bool, method: str) -> list[float]:
    """Milliseconds to start and join one no-op process, after one warm-up process
    (which also starts the forkserver, so its one-time cost is not in these samples)."""
    ctx = mp.get_context(method)
    count = {"fork": 100, "spawn": 12, "forkserver": 40}[method]
    if quick:
        count = {"fork": 20, "spawn": 3, "forkserver": 8}[method]
    _start_join(ctx)
    return [_start_join(ctx) * 1e3 for _ in range(count)]


def forkserver_first(mp, quick: bool) -> float:
    """Milliseconds for the first forkserver process of a fresh interpreter: server start
    plus one start+join (subtract the warm start+join row for the server's own cost)."""
    return _start_join(mp.get_context("forkserver")) * 1e3


def _child(mp, target, *args):
    ctx = mp.get_context(PIPE_METHOD)
    parent_end, child_end = mp.Pipe()
    p = ctx.Process(target=target, args=(child_end, *args))
    p.start()
    child_end.close()
    return p, parent_end


def pipe_round_trip(mp, quick: bool) -> list[float]:
    """Microseconds per send+recv round trip of a small object with an echoing child
    (the median of 10 chunks)."""
    total = 2_000 if quick else 20_000
    chunks = 10
    p, conn = _child(mp, echo)
    try:
        for _ in range(200):  # warm-up
            conn.send(SMALL_OBJECT)
            conn.recv()
        samples = []
        per_chunk = total // chunks
        for _ in range(chunks):
            t0 = time.perf_counter()
            for _ in range(per_chunk):
                conn.send(SMALL_OBJECT)
                conn.recv()
            samples.append((time.perf_counter() - t0) / per_chunk * 1e6)
    finally:
        conn.send(None)
        p.join()
    return samples


def pipe_throughput(mp, quick: bool, raw: bool) -> list[float]:
    """MB/s (10**6 bytes/s) sending 1 MiB bytes objects to a child that receives them
    (``send_bytes``/``recv_bytes`` if *raw*, else ``send``/``recv``); one sample per round."""
    rounds, count = (2, 20) if quick else (5, 60)
    payload = bytes(range(256)) * (MIB // 256)
    p, conn = _child(mp, sink, rounds + 1, count, raw)
    send = conn.send_bytes if raw else conn.send
    samples = []
    try:
        for rnd in range(rounds + 1):  # the first round is a warm-up
            t0 = time.perf_counter()
            for _ in range(count):
                send(payload)
            received = conn.recv()
            elapsed = time.perf_counter() - t0
            if received != count * MIB:
                raise RuntimeError(f"child received {received} bytes, expected {count * MIB}")
            if rnd:
                samples.append(count * MIB / elapsed / 1e6)
    finally:
        conn.close()
        p.join()
    return samples


for _method in ("fork", "spawn", "forkserver"):
    BENCH.add_case(f"start+join [{_method}]", start_join, kind="latency", unit="ms",
                   method=_method)
BENCH.add_case("forkserver first start+join (incl. server start)", forkserver_first,
               kind="latency", unit="ms")
BENCH.add_case("Pipe round trip, small object", pipe_round_trip, kind="latency", unit="µs")
BENCH.add_case("Pipe 1 MiB bytes, send_bytes", pipe_throughput, kind="throughput",
               unit="MB/s", rss=True, raw=True)
BENCH.add_case("Pipe 1 MiB bytes, send", pipe_throughput, kind="throughput", unit="MB/s",
               rss=True, raw=False)


if __name__ == "__main__":
    raise SystemExit(BENCH.main())
