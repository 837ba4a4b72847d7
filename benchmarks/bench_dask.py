"""Dask benchmark (issue #6): ``map`` of 1 ms tasks on polyproc's dask context, against Dask's
own ``client.map`` on the same cluster and against polyproc's local engine, in the same run.

Run: ``python benchmarks/bench_dask.py [--quick] [--tasks N] [--repeats R] [--json out.json]``
(needs ``pip install -e '.[dask]'``).

The cluster is real and shared by every row: a ``dask scheduler`` process and ``--workers``
``dask worker`` processes (one thread each) started with the command-line tools on loopback.
The local engine gets as many worker processes. Each row starts its pool (or client) once,
warms it up with a small map that reaches every worker, then times ``--repeats`` maps of
``--tasks`` tasks that each busy-wait 1 ms; rows are interleaved, rotating which goes first,
so machine noise hits all alike. Throughput is tasks per second (higher is better); the ideal
is ``workers * 1000``. The last column is each row's median over Dask's ``client.map``: the
goal of issue #6 is that polyproc's dask-context ``map`` reaches at least 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path[:0] = [str(SRC)]

TASK_S = 0.001
GOAL = 0.9


def spin_1ms(x: int) -> int:
    """Busy-wait 1 ms of wall-clock time (CPU-bound work of a known duration)."""
    end = time.perf_counter() + TASK_S
    while time.perf_counter() < end:
        pass
    return x


# ------------------------------------------------------------------------- the cluster


class CliCluster:
    """`dask scheduler` + N `dask worker` processes on loopback, stopped on exit."""

    def __init__(self, workers: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="polyproc-bench-dask-")
        d = Path(self.dir.name)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(SRC), env.get("PYTHONPATH", "")])
        self.procs: list[subprocess.Popen] = []
        sched_file = d / "scheduler.json"

        def start(*args: str) -> None:
            log = open(d / f"{len(self.procs)}.log", "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=str(HERE), start_new_session=True))

        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(sched_file))
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and sched_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.1)
        self.address = json.loads(sched_file.read_text())["address"]
        for _ in range(workers):
            start("worker", self.address, "--nthreads", "1", "--nworkers", "1",
                  "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0")
        from distributed import Client

        with Client(self.address, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self) -> None:
        for proc in reversed(self.procs):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(5)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        self.dir.cleanup()


# ------------------------------------------------------------------------- the rows


class Row:
    name = ""

    def start(self) -> None: ...

    def map(self, n: int) -> list[int]:
        raise NotImplementedError

    def stop(self) -> None: ...


class DaskClientMap(Row):
    name = "Dask client.map + gather"

    def __init__(self, address: str) -> None:
        self.address = address

    def start(self) -> None:
        from distributed import Client

        self.client = Client(self.address, set_as_default=False, direct_to_workers=True)

    def map(self, n: int) -> list[int]:
        return self.client.gather(self.client.map(spin_1ms, range(n), pure=False))

    def stop(self) -> None:
        self.client.close()


class PolyprocDaskPool(Row):
    name = "polyproc dask context Pool.map"

    def __init__(self, address: str) -> None:
        self.address = address

    def start(self) -> None:
        import polyproc

        ctx = polyproc.get_context("dask", address=self.address, direct_to_workers=True)
        self.pool = ctx.Pool()

    def map(self, n: int) -> list[int]:
        return self.pool.map(spin_1ms, range(n))

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()


class PolyprocDaskExecutor(PolyprocDaskPool):
    name = "polyproc dask context ProcessPoolExecutor.map"

    def start(self) -> None:
        import polyproc

        ctx = polyproc.get_context("dask", address=self.address, direct_to_workers=True)
        self.ex = ctx.ProcessPoolExecutor()

    def map(self, n: int) -> list[int]:
        return list(self.ex.map(spin_1ms, range(n)))

    def stop(self) -> None:
        self.ex.shutdown()


class PolyprocLocalPool(Row):
    name = "polyproc local engine Pool.map (fork)"

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def start(self) -> None:
        import polyproc

        self.pool = polyproc.get_context("fork").Pool(self.workers)

    def map(self, n: int) -> list[int]:
        return self.pool.map(spin_1ms, range(n))

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()


# ------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1000 tasks, 3 repeats")
    ap.add_argument("--tasks", type=int, default=None, help="tasks per map (default 4000)")
    ap.add_argument("--repeats", type=int, default=None, help="timed maps per row (default 5)")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers / local processes")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    n = args.tasks or (1000 if args.quick else 4000)
    repeats = args.repeats or (3 if args.quick else 5)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"starting a dask scheduler and {args.workers} workers ...")
    cluster = CliCluster(args.workers)
    rows: list[Row] = [DaskClientMap(cluster.address), PolyprocDaskPool(cluster.address),
                       PolyprocDaskExecutor(cluster.address), PolyprocLocalPool(args.workers)]
    results: dict[str, list[float]] = {row.name: [] for row in rows}
    try:
        for row in rows:
            row.start()
            assert row.map(4 * args.workers) == list(range(4 * args.workers))  # warm-up
        for rep in range(repeats):
            shift = rep % len(rows)
            for row in rows[shift:] + rows[:shift]:
                t0 = time.perf_counter()
                out = row.map(n)
                dt = time.perf_counter() - t0
                assert out == list(range(n)), row.name
                results[row.name].append(n / dt)
                log(f"[{rep + 1}/{repeats}] {row.name}: {n / dt:,.0f} tasks/s")
    finally:
        for row in rows:
            try:
                row.stop()
            except Exception as e:  # noqa: BLE001 - report, keep stopping the others
                log(f"stopping {row.name}: {e!r}")
        cluster.close()

    base = statistics.median(results[DaskClientMap.name])
    ideal = args.workers / TASK_S
    lines = [
        f"### Dask: map of {n:,} tasks of 1 ms, {args.workers} workers x 1 thread "
        f"(ideal {ideal:,.0f} tasks/s)",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {repeats} interleaved repeats",
        "",
        "| row | median tasks/s | best tasks/s | % of ideal | vs client.map |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        vals = results[row.name]
        med = statistics.median(vals)
        lines.append(f"| {row.name} | {med:,.0f} | {max(vals):,.0f} | {100 * med / ideal:.0f}% "
                     f"| {med / base:.2f} |")
    pool_ratio = statistics.median(results[PolyprocDaskPool.name]) / base
    verdict = "met" if pool_ratio >= GOAL else "NOT met"
    lines += ["", f"Goal (dask-context Pool.map >= {GOAL:.0%} of client.map): {verdict} "
              f"({pool_ratio:.2f})."]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"tasks": n, "workers": args.workers,
                                         "results": results, "ratio": pool_ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
