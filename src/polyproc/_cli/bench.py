"""``python -m polyproc bench``: run the benchmark scripts and print one combined report.

The scripts are the ``benchmarks/bench_*.py`` files of the source repository (they are not
part of the installed package). They are found next to the package when polyproc is installed
from a clone (``pip install -e .``), else in ``./benchmarks``, or wherever ``--dir`` says.

Each script runs as ``python bench_NAME.py [--quick] [-k TEXT] --json FILE`` in its own
interpreter, comparing polyproc with the stdlib and with whichever peers it knows and finds
installed; its progress goes to stderr as it runs. The report (stdout) is a summary table of
polyproc against the stdlib for every case, then each script's own table. ``--chart PATH``
also draws the summary's ratios as a PNG bar chart (needs matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where ``--chart`` without a value writes, relative to the repository root.
DEFAULT_CHART = Path("docs") / "benchmark.png"
#: Peers some benchmark scripts compare against when they are installed.
PEERS = ("loky", "mpire", "joblib", "dask", "distributed")
MATPLOTLIB_MISSING = (
    "--chart needs matplotlib, which is not installed: pip install matplotlib "
    "(or pip install -e '.[bench]' from the clone)"
)


def repo_root() -> Path:
    """The source tree polyproc is imported from (``src/polyproc/..`` twice up)."""
    import polyproc

    return Path(polyproc.__file__).resolve().parents[2]


def _is_bench_dir(path: Path) -> bool:
    return (path / "_harness.py").is_file() and any(path.glob("bench_*.py"))


def find_bench_dir(explicit: Path | None = None) -> tuple[Path | None, list[Path]]:
    """The benchmarks folder (or None) and every place that was looked at."""
    candidates = [explicit] if explicit is not None else [repo_root() / "benchmarks",
                                                          Path.cwd() / "benchmarks"]
    for path in candidates:
        if _is_bench_dir(path):
            return path.resolve(), candidates
    return None, candidates


def script_name(path: Path) -> str:
    """``bench_pool.py`` -> ``pool``."""
    return path.stem[len("bench_"):]


def select_scripts(bench_dir: Path, only: list[str] | None) -> list[Path]:
    """The scripts to run, in name order; ``ValueError`` naming the choices if *only* has an
    unknown name (``pool``, ``bench_pool`` and ``bench_pool.py`` all mean the same)."""
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if not only:
        return scripts
    by_name = {script_name(p): p for p in scripts}
    chosen = []
    for name in only:
        key = name.removesuffix(".py").removeprefix("bench_")
        if key not in by_name:
            raise ValueError(f"no benchmark {name!r}; choose from: {', '.join(sorted(by_name))}")
        if by_name[key] not in chosen:
            chosen.append(by_name[key])
    return chosen


# -- running --------------------------------------------------------------------------------


@dataclass
class ScriptRun:
    """What one benchmark script produced."""

    name: str
    returncode: int
    output: str  # its Markdown (stdout)
    stderr_tail: list[str]
    data: dict[str, Any] | None  # its --json payload
    seconds: float
    skipped: str = ""  # why it measured nothing on purpose (e.g. no case matches -k)


def _pump(stream: Any, keep: list[str], echo: bool) -> None:
    for line in stream:
        if echo:
            sys.stderr.write(line)
            sys.stderr.flush()
        keep.append(line.rstrip("\n"))
        del keep[:-40]


def run_script(path: Path, quick: bool, select: str | None, echo: bool = True) -> ScriptRun:
    """Run one benchmark script, echoing its progress (stderr) as it goes."""
    with tempfile.TemporaryDirectory(prefix="polyproc-bench-") as tmp:
        json_path = Path(tmp) / "result.json"
        cmd = [sys.executable, path.name, "--json", str(json_path)]
        if quick:
            cmd.append("--quick")
        if select:
            cmd += ["-k", select]
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=path.parent, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        tail: list[str] = []
        pump = threading.Thread(target=_pump, args=(proc.stderr, tail, echo), daemon=True)
        pump.start()
        out = proc.stdout.read()  # type: ignore[union-attr]
        proc.wait()
        # The harness says where it wrote the JSON: a temporary file, of no use to the reader.
        out = "\n".join(line for line in out.splitlines() if line.strip() != f"wrote {json_path}")
        pump.join()
        data = None
        if json_path.is_file():
            try:
                data = json.loads(json_path.read_text())
            except ValueError:
                data = None
    result = ScriptRun(script_name(path), proc.returncode, out.strip(), tail, data,
                       time.monotonic() - t0)
    if proc.returncode == 2 and any("no case matches" in line for line in tail):
        result.skipped = f"no case matches -k {select!r}"
    return result


# -- the report -----------------------------------------------------------------------------


@dataclass
class Row:
    bench: str
    case: str
    unit: str
    kind: str
    stdlib: float | None
    polyproc: float | None
    ratio: float | None  # > 1: polyproc better
    note: str = ""


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _table_ratios(markdown: str) -> dict[str, str]:
    """``case -> cell`` of the ``polyproc vs stdlib`` column of a script's Markdown table."""
    found: dict[str, str] = {}
    column = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            column = None if not line.strip() else column
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if column is None:
            if "polyproc vs stdlib" in cells:
                column = cells.index("polyproc vs stdlib")
            continue
        if len(cells) > column and not set(cells[0]) <= set("-: "):
            found[cells[0]] = cells[column]
    return found


def _ratio(kind: str, std: float | None, pp: float | None) -> float | None:
    if not std or not pp or std <= 0 or pp <= 0:
        return None
    return std / pp if kind == "latency" else pp / std


def summary_rows(run: ScriptRun) -> list[Row]:
    """polyproc against the stdlib for each case of *run*.

    The ratio is the script's own ``polyproc vs stdlib`` cell when its table has one (so a
    script that shows ``n/a`` for a row where a ratio means nothing is respected), else
    computed from the medians: stdlib / polyproc for latency, polyproc / stdlib for throughput.
    """
    results = run.data.get("results") if isinstance(run.data, dict) else None
    if not isinstance(results, list):  # a script not built on _harness (e.g. bench_dask.py)
        return []
    cells = _table_ratios(run.output)
    by_case: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for r in results:
        if r["case"] not in by_case:
            by_case[r["case"]] = {"kind": r["kind"], "unit": r["unit"]}
            order.append(r["case"])
        by_case[r["case"]][r["impl"]] = r
    rows = []
    for case in order:
        info = by_case[case]
        std, pp = info.get("stdlib"), info.get("polyproc")
        if pp is None:
            continue
        std_v = std.get("median") if std else None
        pp_v = pp.get("median")
        note = ""
        if pp.get("error"):
            note = "polyproc: " + str(pp["error"])[:80]
        elif std and std.get("error") and std_v is None:
            note = "stdlib: " + str(std["error"])[:80]
        cell = cells.get(case)
        if cell is not None:
            m = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)x", cell)
            ratio = float(m.group(1).replace(",", "")) if m else None
        else:
            ratio = _ratio(info["kind"], std_v, pp_v)
        rows.append(Row(run.name, case, info["unit"], info["kind"], std_v, pp_v, ratio, note))
    return rows


def _versions() -> str:
    from importlib import metadata

    from .info import polyproc_version

    parts = [f"polyproc {polyproc_version()}"]
    for dist in PEERS:
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)


def report(runs: list[ScriptRun], quick: bool, select: str | None) -> tuple[str, list[Row]]:
    """The combined Markdown report and its summary rows."""
    rows = [row for run in runs for row in summary_rows(run)]
    lines = ["# polyproc benchmarks", ""]
    lines.append(f"Python {platform.python_version()} on {platform.platform()}, "
                 f"{os.cpu_count()} CPUs; installed: {_versions()}"
                 f"{'; --quick' if quick else ''}{f'; -k {select!r}' if select else ''}.")
    lines += ["", "## Summary: polyproc against the stdlib", ""]
    if rows:
        lines.append("| benchmark | case | unit | better | stdlib | polyproc | polyproc vs stdlib |")
        lines.append("| --- | --- | --- | --- | ---: | ---: | ---: |")
        for r in rows:
            ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
            better = "lower" if r.kind == "latency" else "higher"
            lines.append(f"| {r.bench} | {r.case} | {r.unit} | {better} | {_fmt(r.stdlib)} | "
                         f"{_fmt(r.polyproc)} | {ratio} |")
        lines += ["", "Ratio: > 1 means polyproc is better (stdlib / polyproc for latency, "
                      "polyproc / stdlib for throughput). Peers, when installed, are in each "
                      "benchmark's own table below."]
    else:
        lines.append("No case measured polyproc against the stdlib.")
    problems = [r for r in runs if r.returncode != 0 and not r.skipped]
    skipped = [r for r in runs if r.skipped]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{r.name} ({r.skipped})" for r in skipped) + "."]
    if problems:
        lines += ["", "Failed benchmark scripts:"]
        for run in problems:
            last = run.stderr_tail[-1] if run.stderr_tail else ""
            lines.append(f"- {run.name}: exit code {run.returncode}: {last[:200]}")
    for run in runs:
        if run.output and not run.skipped:
            lines += ["", "---", "", f"<!-- benchmarks/bench_{run.name}.py, {run.seconds:.0f} s -->",
                      "", run.output]
    return "\n".join(lines) + "\n", rows


# -- the chart ------------------------------------------------------------------------------


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_chart(rows: list[Row], path: Path, title: str = "") -> int:
    """Draw the ratios of *rows* as a horizontal bar chart (log scale) in *path*; return the
    number of bars (0: nothing to draw, no file written)."""
    bars = [r for r in rows if r.ratio is not None and r.ratio > 0]
    if not bars:
        return 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    labels = [f"{r.bench}: {r.case}" for r in bars]
    values = [r.ratio for r in bars if r.ratio is not None]  # all of them (see bars)
    colors = ["#2e7d32" if v >= 1 else "#c62828" for v in values]
    height = max(2.5, 0.38 * len(bars) + 1.4)
    fig, ax = plt.subplots(figsize=(10, height))
    ypos = list(range(len(bars)))[::-1]
    # Bars grow from 1x: to the right when polyproc is better, to the left when it is worse.
    ax.barh(ypos, [v - 1.0 for v in values], left=1.0, color=colors, height=0.7)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(ypos)
    ax.set_yticklabels(labels, fontsize=8)
    lo, hi = min([*values, 1.0]), max([*values, 1.0])
    ax.set_xlim(lo / 2.0, hi * 2.5)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}x"))
    for y, v in zip(ypos, values, strict=True):
        if v >= 1:
            ax.text(v * 1.05, y, f"{v:.3g}x", va="center", ha="left", fontsize=8)
        else:
            ax.text(v / 1.05, y, f"{v:.3g}x", va="center", ha="right", fontsize=8)
    ax.set_xlabel("polyproc vs stdlib (log scale; > 1: polyproc is better)")
    ax.set_title(title or "polyproc against the standard library", fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.25)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return len(bars)


# -- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="pass --quick to every script: smaller loops, 3 repeats (noisier)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only benchmarks/bench_NAME.py (repeatable), e.g. --only pool")
    parser.add_argument("-k", dest="select", metavar="TEXT", default=None,
                        help="only cases whose name contains TEXT (passed to every script)")
    parser.add_argument("--chart", nargs="?", type=Path, const=DEFAULT_CHART, default=None,
                        metavar="PATH",
                        help="also write a PNG bar chart of the polyproc-vs-stdlib ratios "
                             f"(default {DEFAULT_CHART.as_posix()} in the repository; needs "
                             "matplotlib)")
    parser.add_argument("--dir", type=Path, default=None, metavar="DIR",
                        help="the benchmarks folder (default: the clone's benchmarks/, "
                             "else ./benchmarks)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")


def run(args: argparse.Namespace) -> int:
    """Run the selected scripts; print the report. 0: all ran; 1: a script or the chart
    failed; 2: nothing to run (benchmarks not found, unknown name, or matplotlib missing)."""
    bench_dir, looked = find_bench_dir(args.dir)
    if bench_dir is None:
        print("bench: the benchmark scripts were not found; looked in: "
              + ", ".join(str(p) for p in looked) + ".\n"
              "They live in the benchmarks/ folder of polyproc's source repository and are not "
              "part of the installed package: run this from a clone (pip install -e . there), "
              "or pass --dir PATH/TO/benchmarks.", file=sys.stderr)
        return 2
    try:
        scripts = select_scripts(bench_dir, args.only)
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    if args.list:
        for p in scripts:
            print(f"{script_name(p):<16} {p}")
        return 0
    chart = args.chart
    if chart is not None:
        if not have_matplotlib():
            print(f"bench: {MATPLOTLIB_MISSING}", file=sys.stderr)
            return 2
        if chart == DEFAULT_CHART:
            chart = bench_dir.parent / DEFAULT_CHART
    print(f"bench: running {', '.join(script_name(p) for p in scripts)} from {bench_dir}"
          f"{' (--quick)' if args.quick else ''}; progress follows on stderr", file=sys.stderr,
          flush=True)
    runs = []
    for path in scripts:
        print(f"\nbench: == {path.name} ==", file=sys.stderr, flush=True)
        runs.append(run_script(path, args.quick, args.select))
    text, rows = report(runs, args.quick, args.select)
    print(text, end="", flush=True)
    status = 0
    if all(r.skipped for r in runs):
        print(f"bench: no case matches -k {args.select!r} in any benchmark", file=sys.stderr)
        status = 2
    if any(r.returncode != 0 and not r.skipped for r in runs):
        status = 1
    if chart is not None:
        count = write_chart(rows, chart, f"polyproc vs stdlib, Python "
                                         f"{platform.python_version()}, {os.cpu_count()} CPUs"
                                         f"{' (--quick)' if args.quick else ''}")
        if count:
            print(f"\nwrote {chart} ({count} bar{'s' if count != 1 else ''})")
        else:
            print("bench: no polyproc-vs-stdlib ratio was measured, so no chart was written",
                  file=sys.stderr)
            status = status or 1
    return status
