"""Paired start+join and Pipe round trip: both libraries alternate in ONE process.

Less sensitive to machine noise than separate runs: each stdlib start sits next to a
polyproc start. Run: ``python benchmarks/paired_start_join.py`` (about a minute).
"""

import multiprocessing as smp
import os
import statistics
import time

import polyproc as pmp

LIBS = ("stdlib", "polyproc")


def _order(i: int) -> tuple[str, str]:
    return LIBS if i % 2 else LIBS[::-1]


def start_join(method: str, n: int) -> tuple[float, float]:
    """Median start+join seconds for (stdlib, polyproc), alternating."""
    ctxs = {"stdlib": smp.get_context(method), "polyproc": pmp.get_context(method)}
    for ctx in ctxs.values():  # warm up (starts the fork server, the tracker)
        p = ctx.Process(target=os.getpid)
        p.start()
        p.join()
    res: dict[str, list[float]] = {k: [] for k in ctxs}
    for i in range(n):
        for k in _order(i):
            t = time.perf_counter()
            p = ctxs[k].Process(target=os.getpid)
            p.start()
            p.join()
            res[k].append(time.perf_counter() - t)
    return statistics.median(res["stdlib"]), statistics.median(res["polyproc"])


def echo(conn) -> None:  # noqa: ANN001
    while (x := conn.recv()) is not None:
        conn.send(x)


def pipe_round_trip(rounds: int = 2000, repeats: int = 10) -> tuple[float, float]:
    """Median seconds per small-object round trip with a forked echo child."""
    ends = {}
    for name, lib in zip(LIBS, (smp, pmp), strict=True):
        ctx = lib.get_context("fork")
        a, b = ctx.Pipe()
        p = ctx.Process(target=echo, args=(b,))
        p.start()
        ends[name] = (a, p)
    res: dict[str, list[float]] = {k: [] for k in LIBS}
    obj = (1, "two", 3.0)
    for rep in range(repeats):
        for k in _order(rep):
            a = ends[k][0]
            t = time.perf_counter()
            for _ in range(rounds):
                a.send(obj)
                a.recv()
            res[k].append((time.perf_counter() - t) / rounds)
    for a, p in ends.values():
        a.send(None)
        p.join()
    return statistics.median(res["stdlib"]), statistics.median(res["polyproc"])


if __name__ == "__main__":
    for method, n in (("fork", 200), ("forkserver", 200), ("spawn", 30)):
        s, q = start_join(method, n)
        print(f"{method:10s} start+join median stdlib {s * 1e3:.2f} ms  "
              f"polyproc {q * 1e3:.2f} ms  ratio {s / q:.2f}x")
    s, q = pipe_round_trip()
    print(f"Pipe round trip median stdlib {s * 1e6:.1f} us  polyproc {q * 1e6:.1f} us  "
          f"ratio {s / q:.2f}x")
