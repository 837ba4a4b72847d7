"""Paired Pool(2) start-up: both libraries alternate in ONE process.

Per start method: milliseconds from ``ctx.Pool(2)`` to the result of the first
``pool.apply(os.getpid)`` ("start"), and from there through ``terminate()`` + ``join()``
("teardown"). Later pools only (a warm-up pool per library comes first); ``--cold`` adds the
first pool of a fresh interpreter, alternating fresh interpreters per library.
Run: ``python benchmarks/paired_pool_startup.py [--cold] [METHOD ...]`` (a minute or two).
"""

import multiprocessing as smp
import os
import statistics
import subprocess
import sys
import time

import polyproc as pmp

LIBS = ("stdlib", "polyproc")
PAIRS = {"fork": 100, "forkserver": 100, "spawn": 20}
COLD_PAIRS = {"fork": 20, "forkserver": 20, "spawn": 10}

_COLD = """
import os, sys, time
t0 = time.perf_counter()
import {mod} as mp
ctx = mp.get_context({method!r})
t1 = time.perf_counter()
pool = ctx.Pool(2)
pool.apply(os.getpid)
t2 = time.perf_counter()
pool.terminate()
pool.join()
print((t2 - t1) * 1e3, (time.perf_counter() - t2) * 1e3, (t1 - t0) * 1e3)
"""


def _order(i: int) -> tuple[str, str]:
    return LIBS if i % 2 else LIBS[::-1]


def one_pool(ctx) -> tuple[float, float]:  # noqa: ANN001
    """(start, teardown) seconds of one Pool(2)."""
    t0 = time.perf_counter()
    pool = ctx.Pool(2)
    pool.apply(os.getpid)
    t1 = time.perf_counter()
    pool.terminate()
    pool.join()
    return t1 - t0, time.perf_counter() - t1


def later_pools(method: str, n: int) -> dict[str, tuple[float, float]]:
    """Median (start, teardown) seconds per library, alternating, after a warm-up pool."""
    ctxs = {"stdlib": smp.get_context(method), "polyproc": pmp.get_context(method)}
    for ctx in ctxs.values():  # warm up: lazy imports, the fork server, the tracker
        one_pool(ctx)
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in LIBS}
    for i in range(n):
        for k in _order(i):
            res[k].append(one_pool(ctxs[k]))
    return {k: (statistics.median(s for s, _ in v), statistics.median(t for _, t in v))
            for k, v in res.items()}


def cold_pools(method: str, n: int) -> dict[str, tuple[float, float]]:
    """Median (start, teardown) seconds of the first pool of a fresh interpreter."""
    mods = {"stdlib": "multiprocessing", "polyproc": "polyproc"}
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in LIBS}
    for i in range(n):
        for k in _order(i):
            code = _COLD.format(mod=mods[k], method=method)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.split()
            res[k].append((float(out[0]) / 1e3, float(out[1]) / 1e3))
    return {k: (statistics.median(s for s, _ in v), statistics.median(t for _, t in v))
            for k, v in res.items()}


def _report(label: str, r: dict[str, tuple[float, float]]) -> None:
    (ss, st), (ps, pt) = r["stdlib"], r["polyproc"]
    print(f"{label:22s} start+first result: stdlib {ss * 1e3:6.2f} ms  polyproc "
          f"{ps * 1e3:6.2f} ms  ratio {ss / ps:.2f}x | teardown: stdlib {st * 1e3:6.2f} ms  "
          f"polyproc {pt * 1e3:6.2f} ms  ratio {st / pt:.2f}x", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    cold = "--cold" in args
    methods = [a for a in args if not a.startswith("--")] or ["fork", "forkserver", "spawn"]
    for method in methods:
        _report(f"{method} (later pools)", later_pools(method, PAIRS[method]))
        if cold:
            _report(f"{method} (cold)", cold_pools(method, COLD_PAIRS[method]))
