"""Pool benchmark (issue #4): polyproc's Pool and ProcessPoolExecutor against the stdlib's,
and against loky, mpire and joblib when they are installed (a missing peer is skipped).

Run: ``python benchmarks/bench_pool.py [--quick] [-k TEXT] [--impl NAME] [--json out.json]``
(see benchmarks/README.md for what each case times and how to read the table).

Every measurement runs in a fresh interpreter (``_harness``), with 2 workers. Pool start-up is
not timed except in the start-up cases: each case first starts its pool and runs a warm-up
that reaches every worker. A row is one API: ``[Pool]`` rows compare ``multiprocessing.Pool``
with ``polyproc.Pool`` (and mpire's ``WorkerPool``, joblib's ``Parallel``), ``[executor]``
rows compare ``concurrent.futures.ProcessPoolExecutor`` with ``polyproc.futures``'s (and
loky's reusable executor). A library that has no such API shows a dash. The last columns
check polyproc against the goals of issue #4.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from _harness import Benchmark, Case, Result, _fmt, ratio

WORKERS = 2
METHOD = "fork"  # start method of every case but the start-up ones (stdlib, polyproc, mpire)
MIB = 1 << 20

ALL_IMPLS = {"stdlib": "multiprocessing", "polyproc": "polyproc", "loky": "loky",
             "mpire": "mpire", "joblib": "joblib"}
PEERS = ("loky", "mpire", "joblib")
MISSING = [name for name in PEERS if importlib.util.find_spec(ALL_IMPLS[name]) is None]
IMPLS = {k: v for k, v in ALL_IMPLS.items() if k not in MISSING}

POOL_IMPLS = ("stdlib", "polyproc", "mpire", "joblib")
EXEC_IMPLS = ("stdlib", "polyproc", "loky")
CORE = ("stdlib", "polyproc")


# -- functions run in the workers (module level: importable by name) ------------------------


def square(x: int) -> int:
    return x * x


def noop(x: Any = None) -> None:
    return None


def identity(x: Any) -> Any:
    return x


def spin(seconds: float) -> None:
    """Busy-wait ``seconds`` of wall-clock time (CPU-bound work of a known duration)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_50us(_x: Any) -> None:
    end = time.perf_counter() + 50e-6
    while time.perf_counter() < end:
        pass


def _spin_many(count: int) -> None:
    for _ in range(count):
        spin_50us(None)


# -- one adapter per library and API: start, warm up, map / imap_unordered / apply, stop ----


def _lib(mp: Any) -> str:
    return mp.__name__.split(".")[0]


class Runner:
    """A started, warmed-up pool of ``WORKERS`` workers behind one small interface."""

    def __enter__(self) -> Runner:
        # Reach every worker (executors may start theirs on demand) before timing anything.
        self.map(spin, [0.02] * (2 * WORKERS), chunksize=1)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def map(self, fn: Callable, items: Sequence, chunksize: int | None = None) -> list:
        raise NotImplementedError

    def imap_unordered(self, fn: Callable, items: Iterable,
                       chunksize: int | None = None) -> Iterable:
        raise NotImplementedError

    def lazy_map(self, fn: Callable, items: Iterable) -> Iterable:
        raise NotImplementedError

    def apply_many(self, fn: Callable, count: int) -> None:
        """``count`` single calls ``fn(i)`` submitted one by one, then all waited for."""
        raise NotImplementedError

    def call(self, fn: Callable, *args: Any) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PoolRunner(Runner):
    """``multiprocessing.Pool`` or ``polyproc.Pool``."""

    def __init__(self, mp: Any) -> None:
        self.pool = mp.get_context(METHOD).Pool(WORKERS)

    def map(self, fn, items, chunksize=None):
        return self.pool.map(fn, items, chunksize)

    def imap_unordered(self, fn, items, chunksize=None):
        if chunksize is None:  # the stdlib's default is 1, polyproc's None (adaptive)
            return self.pool.imap_unordered(fn, items)
        return self.pool.imap_unordered(fn, items, chunksize)

    def apply_many(self, fn, count):
        apply_async = self.pool.apply_async
        results = [apply_async(fn, (i,)) for i in range(count)]
        for r in results:
            r.get()

    def call(self, fn, *args):
        return self.pool.apply(fn, args)

    def close(self):
        self.pool.terminate()
        self.pool.join()


class ExecutorRunner(Runner):
    """``concurrent.futures``'s, ``polyproc.futures``' or loky's ProcessPoolExecutor."""

    def __init__(self, mp: Any) -> None:
        lib = _lib(mp)
        if lib == "loky":
            self.ex = mp.get_reusable_executor(max_workers=WORKERS)
        elif lib == "polyproc":
            import polyproc.futures

            self.ex = polyproc.futures.ProcessPoolExecutor(
                WORKERS, mp_context=mp.get_context(METHOD))
        else:
            import concurrent.futures

            self.ex = concurrent.futures.ProcessPoolExecutor(
                WORKERS, mp_context=mp.get_context(METHOD))

    def map(self, fn, items, chunksize=None):
        return list(self.lazy_map(fn, items, chunksize))

    def lazy_map(self, fn, items, chunksize=None):
        if chunksize is None:  # stdlib and loky default to 1, polyproc to None (adaptive)
            return self.ex.map(fn, items)
        return self.ex.map(fn, items, chunksize=chunksize)

    def apply_many(self, fn, count):
        submit = self.ex.submit
        futures = [submit(fn, i) for i in range(count)]
        for f in futures:
            f.result()

    def call(self, fn, *args):
        return self.ex.submit(fn, *args).result()

    def close(self):
        self.ex.shutdown(wait=True)


class MpireRunner(Runner):
    """mpire's ``WorkerPool`` (fork, ``keep_alive=True`` so workers outlive one map)."""

    def __init__(self, mp: Any) -> None:
        self.pool = mp.WorkerPool(n_jobs=WORKERS, start_method=METHOD, keep_alive=True)

    def map(self, fn, items, chunksize=None):
        return self.pool.map(fn, items, chunk_size=chunksize)

    def imap_unordered(self, fn, items, chunksize=None):
        return self.pool.imap_unordered(fn, items, chunk_size=chunksize)

    def apply_many(self, fn, count):
        apply_async = self.pool.apply_async
        results = [apply_async(fn, (i,)) for i in range(count)]
        for r in results:
            r.get()

    def call(self, fn, *args):
        return self.pool.apply(fn, args)

    def close(self):
        self.pool.terminate()


class JoblibRunner(Runner):
    """joblib's ``Parallel(n_jobs=2)`` (loky backend; its workers are reused between calls)."""

    def __init__(self, mp: Any) -> None:
        self.joblib = mp

    def _parallel(self, **kw: Any) -> Any:
        return self.joblib.Parallel(n_jobs=WORKERS, **kw)

    def map(self, fn, items, chunksize=None):
        delayed = self.joblib.delayed(fn)
        kw = {} if chunksize is None else {"batch_size": chunksize}
        return self._parallel(**kw)(delayed(x) for x in items)

    def imap_unordered(self, fn, items, chunksize=None):
        delayed = self.joblib.delayed(fn)
        kw = {} if chunksize is None else {"batch_size": chunksize}
        return self._parallel(return_as="generator_unordered", **kw)(delayed(x) for x in items)

    def call(self, fn, *args):
        return self._parallel()([self.joblib.delayed(fn)(*args)])[0]

    def close(self):
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def runner(mp: Any, api: str) -> Runner:
    """The started pool of library ``mp`` for ``api`` ("pool" or "executor")."""
    lib = _lib(mp)
    if lib == "mpire":
        return MpireRunner(mp)
    if lib == "joblib":
        return JoblibRunner(mp)
    if lib == "loky" or api == "executor":
        return ExecutorRunner(mp)
    return PoolRunner(mp)


def _samples(measure: Callable[[], float], most: int, budget: float) -> list[float]:
    """Call ``measure`` until it returned ``most`` values or ``budget`` seconds went by."""
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < most and (not out or time.perf_counter() - start < budget):
        out.append(measure())
    return out


# -- cases -----------------------------------------------------------------------------------

#: Libraries whose default chunksize for executor map is 1: their default-args tiny map runs
#: at a few thousand tasks/s, so they map only the first TINY_CAPPED items (a rate, comparable).
TINY_CAPPED = 20_000


def tiny_map(mp, quick: bool, api: str, tuned: bool) -> list[float]:
    """Tasks/s of ``map(square, list of 200k ints)``: default arguments, or chunksize 200k/8."""
    n = 50_000 if quick else 200_000
    if not tuned and api == "executor" and _lib(mp) in ("multiprocessing", "loky"):
        n = min(n, TINY_CAPPED)
    items = list(range(n))
    chunksize = n // 8 if tuned else None
    with runner(mp, api) as r:

        def measure() -> float:
            t0 = time.perf_counter()
            out = r.map(square, items, chunksize)
            elapsed = time.perf_counter() - t0
            if len(out) != n or out[-1] != (n - 1) ** 2:
                raise RuntimeError("wrong map result")
            return n / elapsed

        return _samples(measure, most=3, budget=1.5)


def submits(mp, quick: bool, api: str) -> list[float]:
    """Tasks/s of 20k single ``submit``/``apply_async`` calls of a no-op, waiting for all."""
    n = 5_000 if quick else 20_000
    with runner(mp, api) as r:

        def measure() -> float:
            t0 = time.perf_counter()
            r.apply_many(noop, n)
            return n / (time.perf_counter() - t0)

        return _samples(measure, most=2, budget=2.0)


def imap_spin(mp, quick: bool) -> list[float]:
    """``imap_unordered`` over 50k items of 50 µs busy-wait: % of the ideal 2 x 20k tasks/s."""
    n = 10_000 if quick else 50_000
    with runner(mp, "pool") as r:

        def measure() -> float:
            t0 = time.perf_counter()
            count = sum(1 for _ in r.imap_unordered(spin_50us, range(n)))
            elapsed = time.perf_counter() - t0
            if count != n:
                raise RuntimeError(f"got {count} results, expected {n}")
            return 100.0 * (n * 50e-6 / WORKERS) / elapsed

        return _samples(measure, most=2, budget=2.0)


def bare_spin(mp, quick: bool) -> float:
    """Reference: the same 50 µs busy-waits split over 2 bare processes, no pool (% of ideal):
    what the machine allowed at that moment."""
    n = 10_000 if quick else 50_000
    ctx = mp.get_context(METHOD)
    procs = [ctx.Process(target=_spin_many, args=(n // WORKERS,)) for _ in range(WORKERS)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return 100.0 * (n * 50e-6 / WORKERS) / (time.perf_counter() - t0)


def round_trip_64mib(mp, quick: bool, api: str) -> list[float]:
    """GB/s (10**9 bytes/s, counting 128 MiB) sending a 64 MiB float64 array to a worker that
    returns it."""
    import numpy as np

    arr = np.arange(64 * MIB // 8, dtype=np.float64)
    with runner(mp, api) as r:
        r.call(identity, arr[:8])  # the worker imports numpy
        r.call(identity, arr)  # first touch of every buffer and mapping on the way

        def measure() -> float:
            t0 = time.perf_counter()
            out = r.call(identity, arr)
            elapsed = time.perf_counter() - t0
            if out.shape != arr.shape or out[-1] != arr[-1] or out[12345] != 12345.0:
                raise RuntimeError("wrong array back")
            return 2 * arr.nbytes / elapsed / 1e9

        return _samples(measure, most=2 if quick else 4, budget=3.0)


def heavy_tail_durations(quick: bool) -> list[float]:
    """400 lognormal task durations (sigma 1.5, fixed seed), scaled to 2 s of work in total."""
    count, total = (200, 1.0) if quick else (400, 2.0)
    rng = random.Random(20240604)
    raw = [rng.lognormvariate(0.0, 1.5) for _ in range(count)]
    scale = total / sum(raw)
    return [d * scale for d in raw]


def heavy_tail(mp, quick: bool, api: str) -> float:
    """``map(spin, durations)`` with default arguments: makespan as % of the ideal,
    ``max(sum / 2, max task)``."""
    durations = heavy_tail_durations(quick)
    ideal = max(sum(durations) / WORKERS, max(durations))
    with runner(mp, api) as r:
        t0 = time.perf_counter()
        out = r.map(spin, durations)
        elapsed = time.perf_counter() - t0
    if len(out) != len(durations):
        raise RuntimeError("wrong number of results")
    return 100.0 * ideal / elapsed


def startup(mp, quick: bool, method: str, cold: bool) -> list[float]:
    """ms from ``Pool(2)`` to the result of the first ``apply(os.getpid)``. ``cold``: the first
    pool of a fresh interpreter (lazy imports, and the forkserver's own start); else the median
    of later pools."""
    ctx = mp.get_context(method)

    def measure() -> float:
        t0 = time.perf_counter()
        pool = ctx.Pool(WORKERS)
        pool.apply(os.getpid)
        elapsed = time.perf_counter() - t0
        pool.terminate()
        pool.join()
        return elapsed * 1e3

    first = measure()
    if cold:
        return [first]
    return _samples(measure, most=3 if quick else 5, budget=3.0)


def _rss_now() -> int:
    """Resident set size of this process now, in bytes (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def _rss_high_water() -> int | None:
    """Peak RSS of this process's memory (VmHWM), in bytes, or None where /proc lacks it.

    Not ``ru_maxrss``: Linux carries that across exec, so a fresh interpreter started by a big
    parent (the harness after importing mpire: ~70 MB) begins with the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class RssSampler:
    """Largest RSS seen while active, sampled every 50 ms (and at start and stop) in a thread;
    on Linux, also the kernel's exact high-water mark."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading

        self.interval = interval
        self.peak = _rss_now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_now(), _rss_high_water() or 0)


#: Items of the memory cases for polyproc; the stdlib runs fewer (see MEMORY_STDLIB).
MEMORY_ITEMS = 10_000_000
MEMORY_ITEMS_QUICK = 1_000_000
#: The stdlib's caps: its imap_unordered (chunksize 1) runs ~20-50k tiny tasks/s, and its
#: executor map submits a future per item up front (~2 KB each, ~7k tasks/s): 10M items would
#: take many minutes and, for the executor, ~20 GB.
MEMORY_STDLIB = {"pool": 1_000_000, "executor": 200_000}
MEMORY_STDLIB_QUICK = {"pool": 200_000, "executor": 50_000}


def memory_items(lib: str, api: str, quick: bool) -> int:
    if lib == "multiprocessing":
        return (MEMORY_STDLIB_QUICK if quick else MEMORY_STDLIB)[api]
    return MEMORY_ITEMS_QUICK if quick else MEMORY_ITEMS


def memory_growth(mp, quick: bool, api: str) -> float:
    """MB (10**6 bytes) the parent's peak RSS grows while ``imap_unordered`` (Pool) or
    executor ``map`` runs ``square`` over a generator of N ints, all consumed, default args."""
    n = memory_items(_lib(mp), api, quick)
    with runner(mp, api) as r:
        base = _rss_now()
        with RssSampler() as rss:
            source = (i for i in range(n))
            it = r.imap_unordered(square, source) if api == "pool" else r.lazy_map(square, source)
            count = 0
            for _ in it:
                count += 1
    if count != n:
        raise RuntimeError(f"got {count} results, expected {n}")
    return max(0.0, (rss.peak - base) / 1e6)


# -- goals of issue #4 and the table --------------------------------------------------------

NA = "not applicable"


@dataclass(frozen=True)
class Goal:
    """A target for polyproc in one row: ``check(polyproc median, stdlib median)``."""

    text: str
    check: Callable[[float | None, float | None], bool | None]
    #: Say "within 5%" when polyproc misses a latency goal against the stdlib by less.
    near: bool = False


def vs_stdlib(times: float, kind: str) -> Callable[[float | None, float | None], bool | None]:
    def check(pp: float | None, std: float | None) -> bool | None:
        r = ratio(kind, std, pp)
        return None if r is None else r >= times
    return check


def at_least(value: float) -> Callable[[float | None, float | None], bool | None]:
    return lambda pp, std: None if pp is None else pp >= value


def below(value: float) -> Callable[[float | None, float | None], bool | None]:
    return lambda pp, std: None if pp is None else pp < value


class PoolBenchmark(Benchmark):
    """The harness, with rows that only some libraries can run, per-row repeat caps and a
    compact table: one median column per library, polyproc vs stdlib, and the goal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.applies: dict[str, tuple[str, ...]] = {}
        self.goals: dict[str, Goal] = {}
        self.max_repeats: dict[str, int] = {}
        self.show_ratio: dict[str, bool] = {}

    def add(self, name: str, fn: Callable[..., Any], *, kind: str, unit: str,
            impls: tuple[str, ...], goal: Goal | None = None, max_repeats: int | None = None,
            show_ratio: bool = True, **params: Any) -> None:
        self.add_case(name, fn, kind=kind, unit=unit, **params)
        self.applies[name] = impls
        if goal is not None:
            self.goals[name] = goal
        if max_repeats is not None:
            self.max_repeats[name] = max_repeats
        self.show_ratio[name] = show_ratio

    def run(self, impls: Sequence[str], cases: Sequence[Case], repeats: int, quick: bool,
            timeout: float, log: Callable[[str], None]) -> dict[tuple[str, str], Result]:
        results = {(c.name, i): Result(c.name, i) for c in cases for i in impls}
        for c in cases:
            for i in impls:
                if i not in self.applies[c.name]:
                    results[c.name, i].error = NA
        for rep in range(repeats):
            order = list(impls[rep % len(impls):]) + list(impls[:rep % len(impls)])
            for case in cases:
                if rep >= self.max_repeats.get(case.name, repeats):
                    continue
                line = []
                for impl in order:
                    res = results[case.name, impl]
                    if res.error:
                        continue
                    out = self.run_worker(case, impl, quick, timeout)
                    if "error" in out:
                        res.error = out["error"]
                        line.append(f"{impl}=ERROR({out['error'][:80]})")
                        continue
                    res.values.append(out["value"])
                    res.rss_self_mib.append(out["rss_self_mib"])
                    res.rss_children_mib.append(out["rss_children_mib"])
                    line.append(f"{impl}={_fmt(out['value'])}")
                if line:
                    log(f"[{rep + 1}/{repeats}] {case.name} ({case.unit}): {' '.join(line)}")
        return results

    def meta(self, repeats: int, quick: bool) -> dict[str, Any]:
        meta = super().meta(repeats, quick)
        from importlib.metadata import PackageNotFoundError, version

        for name in meta["versions"]:
            if name != "stdlib":  # mpire has no __version__: ask the installed distribution
                try:
                    meta["versions"][name] = version(name)
                except PackageNotFoundError:
                    pass
        return meta

    def table(self, impls: Sequence[str], cases: Sequence[Case],
              results: dict[tuple[str, str], Result]) -> str:
        head = ["case", "unit", "better", *impls]
        with_ratio = "stdlib" in impls and "polyproc" in impls
        if with_ratio:
            head.append("polyproc vs stdlib")
        head += ["goal (issue #4)", "goal met?"]
        rows = [head, ["---"] * 3 + ["---:"] * (len(head) - 5) + ["---", "---"]]
        notes = []
        for case in cases:
            row = [case.name, case.unit, "lower" if case.kind == "latency" else "higher"]
            for impl in impls:
                res = results[case.name, impl]
                if res.error == NA:
                    row.append("—")
                elif res.error:  # with values: it failed in a later repeat (they are used)
                    row.append(f"{_fmt(res.median())} (then error)" if res.values else "error")
                    notes.append(f"{case.name} / {impl}: {res.error}"
                                 + (f" (after {len(res.values)} measured runs)"
                                    if res.values else ""))
                else:
                    row.append(_fmt(res.median()))
            std = results[case.name, "stdlib"].median() if "stdlib" in impls else None
            pp = results[case.name, "polyproc"].median() if "polyproc" in impls else None
            if with_ratio:
                r = ratio(case.kind, std, pp) if self.show_ratio[case.name] else None
                row.append("n/a" if r is None else f"{r:.2f}x")
            goal = self.goals.get(case.name)
            if goal is None:
                row += ["", ""]
            else:
                met = goal.check(pp, std)
                verdict = "n/a" if met is None else "yes" if met else "**no**"
                if met is False and goal.near and std and pp and pp <= std * 1.05:
                    verdict = "no (within 5%)"
                row += [goal.text, verdict]
            rows.append(row)
        text = "\n".join("| " + " | ".join(r) + " |" for r in rows)
        text += ("\n\nEach cell is the median over repeats of each run's median (`--json` has "
                 "every value). `—`: the library has no such API. Ratio: > 1 means polyproc "
                 "is better (stdlib / polyproc for latency, polyproc / stdlib for throughput). "
                 "Goals quote the stdlib on a quiet machine; ratio goals are checked against "
                 "the stdlib measured in this run.")
        capped = [c.name for c in cases if c.name in self.max_repeats]
        if capped:
            text += ("\n\nRows run fewer times (their value barely varies, their runs are long): "
                     + "; ".join(f"{n}: {self.max_repeats[n]}" for n in capped) + ".")
        if MISSING:
            text += f"\n\nNot installed, skipped: {', '.join(MISSING)}."
        if notes:
            text += "\n\nErrors:\n" + "\n".join(f"- {n}" for n in notes)
        return text


BENCH = PoolBenchmark("pool: Pool / ProcessPoolExecutor against the stdlib and peers",
                      impls=IMPLS, module="bench_pool")

_POOL = tuple(i for i in POOL_IMPLS if i in IMPLS)
_EXEC = tuple(i for i in EXEC_IMPLS if i in IMPLS)
_POOL_IMAP = tuple(i for i in ("stdlib", "polyproc", "mpire", "joblib") if i in IMPLS)

BENCH.add("tiny map 200k, default args [Pool]", tiny_map, kind="throughput", unit="tasks/s",
          impls=_POOL, api="pool", tuned=False,
          goal=Goal(">= 1.2x stdlib (4.3M/s)", vs_stdlib(1.2, "throughput")))
BENCH.add(f"tiny map 200k, default args [executor] (stdlib, loky: {TINY_CAPPED // 1000}k)",
          tiny_map, kind="throughput", unit="tasks/s", impls=_EXEC, api="executor",
          tuned=False, goal=Goal(">= 500x stdlib (7.9k/s)", vs_stdlib(500, "throughput")))
BENCH.add("tiny map 200k, chunksize 25k [Pool]", tiny_map, kind="throughput", unit="tasks/s",
          impls=_POOL, api="pool", tuned=True)
BENCH.add("tiny map 200k, chunksize 25k [executor]", tiny_map, kind="throughput",
          unit="tasks/s", impls=_EXEC, api="executor", tuned=True)
BENCH.add("20k single apply_async, no-op [Pool]", submits, kind="throughput", unit="tasks/s",
          impls=tuple(i for i in _POOL if i != "joblib"), api="pool",
          goal=Goal(">= 3x stdlib (21k/s)", vs_stdlib(3, "throughput")))
BENCH.add("20k single submit, no-op [executor]", submits, kind="throughput", unit="tasks/s",
          impls=_EXEC, api="executor",
          goal=Goal(">= 3x stdlib (21k/s)", vs_stdlib(3, "throughput")))
BENCH.add("imap_unordered 50k x 50 µs busy-wait [Pool]", imap_spin, kind="throughput",
          unit="% of ideal", impls=_POOL_IMAP,
          goal=Goal(">= 90% (stdlib 54%)", at_least(90.0)))
BENCH.add("reference: the same busy-waits in 2 bare processes", bare_spin, kind="throughput",
          unit="% of ideal", impls=("stdlib",))
BENCH.add("64 MiB float64 array round trip, apply [Pool]", round_trip_64mib,
          kind="throughput", unit="GB/s", impls=_POOL, api="pool",
          goal=Goal(">= 4x stdlib (0.3 GB/s)", vs_stdlib(4, "throughput")))
BENCH.add("64 MiB float64 array round trip, submit [executor]", round_trip_64mib,
          kind="throughput", unit="GB/s", impls=_EXEC, api="executor",
          goal=Goal(">= 4x stdlib (0.3 GB/s)", vs_stdlib(4, "throughput")))
BENCH.add("heavy-tailed 400 tasks (2 s), map default args [Pool]", heavy_tail,
          kind="throughput", unit="% of ideal", impls=_POOL, api="pool",
          goal=Goal(">= 97% (stdlib 96%)", at_least(97.0)))
BENCH.add("heavy-tailed 400 tasks (2 s), map default args [executor]", heavy_tail,
          kind="throughput", unit="% of ideal", impls=_EXEC, api="executor",
          goal=Goal(">= 97% (stdlib 96%)", at_least(97.0)))
for _method in ("fork", "spawn", "forkserver"):
    BENCH.add(f"Pool(2) start + first task [{_method}], first pool", startup, kind="latency",
              unit="ms", impls=CORE, method=_method, cold=True,
              goal=Goal("<= stdlib", vs_stdlib(1.0, "latency"), near=True))
    BENCH.add(f"Pool(2) start + first task [{_method}], later pools", startup, kind="latency",
              unit="ms", impls=CORE, method=_method, cold=False,
              goal=Goal("<= stdlib", vs_stdlib(1.0, "latency"), near=True))
BENCH.add(f"memory: imap_unordered over a generator, {MEMORY_ITEMS // 10**6}M items "
          f"(stdlib: {MEMORY_STDLIB['pool'] // 10**6}M) [Pool]", memory_growth,
          kind="latency", unit="MB RSS growth", impls=CORE, api="pool", max_repeats=1,
          show_ratio=False, goal=Goal("< 50 MB", below(50.0)))
BENCH.add(f"memory: map over a generator, {MEMORY_ITEMS // 10**6}M items "
          f"(stdlib: {MEMORY_STDLIB['executor'] // 1000}k) [executor]", memory_growth,
          kind="latency", unit="MB RSS growth", impls=CORE, api="executor", max_repeats=1,
          show_ratio=False, goal=Goal("< 50 MB", below(50.0)))


if __name__ == "__main__":
    _argv = sys.argv[1:]
    if not any(a.startswith("--timeout") for a in _argv):
        _argv += ["--timeout", "180"]  # a hung pool costs this per case, not the default 300 s
    raise SystemExit(BENCH.main(_argv))
