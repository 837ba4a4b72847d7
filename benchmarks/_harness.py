"""Small harness shared by polyproc's benchmarks: interleaved runs, medians, a Markdown table.

A benchmark script makes one :class:`Benchmark`, registers cases on it and calls
:meth:`Benchmark.main`::

    BENCH = Benchmark("foundation", impls={"stdlib": "multiprocessing", "polyproc": "polyproc"})

    @BENCH.case("start+join [fork]", kind="latency", unit="ms", method="fork")
    def start_join(mp, quick, method):
        ...  # mp is the implementation's module; return a number or a list of numbers

    if __name__ == "__main__":
        raise SystemExit(BENCH.main())

How a run goes:

* Every measurement runs in a fresh worker interpreter (``python -c ...`` importing the script as
  a module), so one implementation's state (a started forkserver, a warm pool, imported modules)
  never affects another's, and functions defined in the script are importable by name in the
  children it starts, under any start method.
* Repeats are interleaved: repeat 1 runs case A for every implementation, then case B, ...;
  the order of the implementations rotates each repeat, so machine noise hits all alike.
* A worker's result is the median of the samples its case returned; the table shows, per case
  and implementation, the median over repeats and the best repeat (the minimum for latency,
  the maximum for throughput), plus a ratio against the baseline where > 1 always means the
  implementation is better: ``baseline / impl`` for latency, ``impl / baseline`` for throughput.
* Cases registered with ``rss=True`` also report the worker's peak RSS and the largest peak RSS
  of its children (``resource.getrusage``), in MiB, median over repeats.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
_RESULT_MARK = "@@bench-result@@ "

KINDS = ("latency", "throughput")


@dataclass(frozen=True)
class Case:
    """One measurement: ``fn(mp, quick, **params)`` returns a value (or samples) in *unit*.

    *kind* is ``"latency"`` (lower is better) or ``"throughput"`` (higher is better).
    """

    name: str
    fn: Callable[..., float | Sequence[float]]
    kind: str
    unit: str
    params: dict[str, Any] = field(default_factory=dict)
    rss: bool = False


@dataclass
class Result:
    """Per-repeat values of one case for one implementation."""

    case: str
    impl: str
    values: list[float] = field(default_factory=list)
    rss_self_mib: list[float] = field(default_factory=list)
    rss_children_mib: list[float] = field(default_factory=list)
    error: str | None = None

    def median(self) -> float | None:
        """Median over repeats (None if nothing was measured)."""
        return statistics.median(self.values) if self.values else None

    def best(self, kind: str) -> float | None:
        """Best repeat: the minimum for latency, the maximum for throughput."""
        if not self.values:
            return None
        return min(self.values) if kind == "latency" else max(self.values)


def ratio(kind: str, baseline: float | None, value: float | None) -> float | None:
    """How many times better *value* is than *baseline* (> 1: better), or None."""
    if not baseline or not value:
        return None
    return baseline / value if kind == "latency" else value / baseline


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def peak_rss_mib() -> tuple[float, float]:
    """(peak RSS of this process, largest peak RSS of its waited-for children) in MiB."""
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes vs KiB
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale / 2**20
    return own, kids


class Benchmark:
    """A named set of cases, run for several implementations and reported as one table.

    *impls* maps a display name to the module passed to each case (e.g. ``"multiprocessing"``
    or ``"polyproc"``); *baseline* is the name the ratio column compares against.
    """

    def __init__(self, title: str, impls: dict[str, str], baseline: str = "stdlib",
                 module: str | None = None) -> None:
        self.title = title
        self.impls = dict(impls)
        self.baseline = baseline
        self.cases: dict[str, Case] = {}
        self._module = module

    # -- registering ---------------------------------------------------------------------

    def add_case(self, name: str, fn: Callable[..., Any], *, kind: str, unit: str,
                 rss: bool = False, **params: Any) -> None:
        """Register case *name*: ``fn(mp, quick, **params)``, see :class:`Case`."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if name in self.cases:
            raise ValueError(f"duplicate case {name!r}")
        if self._module is None:
            self._module = fn.__module__
        self.cases[name] = Case(name, fn, kind, unit, params, rss)

    def case(self, name: str, *, kind: str, unit: str, rss: bool = False,
             **params: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`add_case`."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add_case(name, fn, kind=kind, unit=unit, rss=rss, **params)
            return fn
        return register

    # -- running -------------------------------------------------------------------------

    def _module_name(self) -> str:
        name = self._module or "__main__"
        if name == "__main__":  # the script itself: workers import it by its file name
            name = Path(sys.modules["__main__"].__file__).stem
        return name

    def run_worker(self, case: Case, impl: str, quick: bool, timeout: float) -> dict[str, Any]:
        """Measure *case* for *impl* once, in a fresh interpreter; return its result dict."""
        env = dict(os.environ)
        paths = [str(HERE), str(SRC), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        cmd = [sys.executable, "-c", "import sys, _harness; sys.exit(_harness.worker_main())",
               self._module_name(), impl, case.name, "1" if quick else "0"]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s"}
        for line in proc.stdout.splitlines():
            if line.startswith(_RESULT_MARK):
                return json.loads(line[len(_RESULT_MARK):])
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": tail[:200]}

    def run(self, impls: Sequence[str], cases: Sequence[Case], repeats: int, quick: bool,
            timeout: float, log: Callable[[str], None]) -> dict[tuple[str, str], Result]:
        """Run every case for every implementation *repeats* times, interleaved."""
        results = {(c.name, i): Result(c.name, i) for c in cases for i in impls}
        for rep in range(repeats):
            order = list(impls[rep % len(impls):]) + list(impls[:rep % len(impls)])
            for case in cases:
                line = []
                for impl in order:
                    res = results[case.name, impl]
                    if res.error:  # it failed before: don't spend time on it again
                        continue
                    out = self.run_worker(case, impl, quick, timeout)
                    if "error" in out:
                        res.error = out["error"]
                        line.append(f"{impl}=ERROR")
                        continue
                    res.values.append(out["value"])
                    res.rss_self_mib.append(out["rss_self_mib"])
                    res.rss_children_mib.append(out["rss_children_mib"])
                    line.append(f"{impl}={_fmt(out['value'])}")
                log(f"[{rep + 1}/{repeats}] {case.name} ({case.unit}): {' '.join(line)}")
        return results

    # -- reporting -----------------------------------------------------------------------

    def table(self, impls: Sequence[str], cases: Sequence[Case],
              results: dict[tuple[str, str], Result]) -> str:
        """The Markdown table of *results*."""
        others = [i for i in impls if i != self.baseline]
        has_base = self.baseline in impls
        with_rss = any(c.rss for c in cases)
        head = ["case", "unit", "better"]
        for impl in impls:
            head += [f"{impl} median", f"{impl} best"]
        if has_base:
            head += [f"{impl} vs {self.baseline}" for impl in others]
        if with_rss:
            head += [f"{impl} peak RSS MiB (parent / child)" for impl in impls]
        rows = [head, ["---"] * 3 + ["---:"] * (len(head) - 3)]
        notes = []
        for case in cases:
            row = [case.name, case.unit, "lower" if case.kind == "latency" else "higher"]
            for impl in impls:
                res = results[case.name, impl]
                row += [_fmt(res.median()), _fmt(res.best(case.kind))]
                if res.error:
                    notes.append(f"{case.name} / {impl}: {res.error}")
            if has_base:
                base = results[case.name, self.baseline].median()
                for impl in others:
                    r = ratio(case.kind, base, results[case.name, impl].median())
                    row.append("n/a" if r is None else f"{r:.2f}x")
            if with_rss:
                for impl in impls:
                    res = results[case.name, impl]
                    if case.rss and res.rss_self_mib:
                        row.append(f"{statistics.median(res.rss_self_mib):.0f} / "
                                   f"{statistics.median(res.rss_children_mib):.0f}")
                    else:
                        row.append("")
            rows.append(row)
        text = "\n".join("| " + " | ".join(r) + " |" for r in rows)
        if has_base and others:
            text += (f"\n\nRatio columns: > 1 means the implementation is better than "
                     f"{self.baseline} ({self.baseline} median / median for latency, "
                     f"median / {self.baseline} median for throughput).")
        if notes:
            text += "\n\nErrors (no value measured):\n" + "\n".join(f"- {n}" for n in notes)
        return text

    def meta(self, repeats: int, quick: bool) -> dict[str, Any]:
        """Facts about the run and the machine, for the report header and the JSON file."""
        versions = {}
        for name, module in self.impls.items():
            top = module.split(".")[0]
            try:
                mod = importlib.import_module(top)
                versions[name] = getattr(mod, "__version__", platform.python_version())
            except ImportError as exc:
                versions[name] = f"not importable: {exc}"
        return {
            "title": self.title,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "repeats": repeats,
            "quick": quick,
            "versions": versions,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Command line: run the selected cases and print the table (and write JSON)."""
        parser = argparse.ArgumentParser(description=f"Benchmark: {self.title}")
        parser.add_argument("--quick", action="store_true",
                            help="fewer repeats and smaller loops (a smoke test, noisier)")
        parser.add_argument("--repeats", type=int, default=None,
                            help="interleaved repeats per case (default 5, 3 with --quick)")
        parser.add_argument("--impl", action="append", choices=list(self.impls),
                            help="implementation to run (repeatable; default all)")
        parser.add_argument("-k", dest="select", default=None,
                            help="only cases whose name contains this text")
        parser.add_argument("--json", type=Path, default=None, help="also write results here")
        parser.add_argument("--timeout", type=float, default=300.0,
                            help="seconds one worker may take (default 300)")
        args = parser.parse_args(argv)
        repeats = args.repeats or (3 if args.quick else 5)
        impls = args.impl or list(self.impls)
        cases = [c for c in self.cases.values() if not args.select or args.select in c.name]
        if not cases:
            parser.error(f"no case matches {args.select!r}")

        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

        meta = self.meta(repeats, args.quick)
        start = time.perf_counter()
        results = self.run(impls, cases, repeats, args.quick, args.timeout, log)
        meta["seconds"] = round(time.perf_counter() - start, 1)

        versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if k in impls)
        print(f"## {self.title}\n")
        print(f"Python {meta['python']} on {meta['platform']}, {meta['cpus']} CPUs; {versions}; "
              f"{repeats} interleaved repeats{' (--quick)' if args.quick else ''}; "
              f"{meta['seconds']}s.\n")
        print(self.table(impls, cases, results))
        if args.json:
            payload = {"meta": meta, "results": [
                {"case": c.name, "kind": c.kind, "unit": c.unit, "impl": i,
                 "values": results[c.name, i].values,
                 "median": results[c.name, i].median(),
                 "best": results[c.name, i].best(c.kind),
                 "rss_self_mib": results[c.name, i].rss_self_mib,
                 "rss_children_mib": results[c.name, i].rss_children_mib,
                 "error": results[c.name, i].error}
                for c in cases for i in impls]}
            args.json.write_text(json.dumps(payload, indent=2) + "\n")
            print(f"\nwrote {args.json}")
        return 0


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Worker side: ``MODULE IMPL CASE QUICK`` -> print one result line (see the module doc)."""
    module_name, impl, case_name, quick = argv if argv is not None else sys.argv[1:]
    module = importlib.import_module(module_name)
    bench = next(v for v in vars(module).values() if isinstance(v, Benchmark))
    case = bench.cases[case_name]
    mp = importlib.import_module(bench.impls[impl])
    out = case.fn(mp, quick == "1", **case.params)
    samples = [float(x) for x in out] if isinstance(out, Sequence) else [float(out)]
    own, kids = peak_rss_mib()
    result = {"value": statistics.median(samples), "samples": samples,
              "rss_self_mib": own, "rss_children_mib": kids}
    sys.stdout.flush()
    print(_RESULT_MARK + json.dumps(result), flush=True)
    return 0
