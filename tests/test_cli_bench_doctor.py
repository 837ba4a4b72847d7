"""``python -m polyproc info``, ``doctor`` and ``bench``, as a user runs them."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from polyproc.__main__ import main
from polyproc._cli import bench, doctor

ROOT = Path(__file__).resolve().parents[1]
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAVE_SHM = os.path.isdir("/dev/shm")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(*args: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "polyproc", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


# -- info -----------------------------------------------------------------------------------


def test_info_lists_versions_methods_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for label in ("polyproc", "python", "start methods", "default start method", "cpu_count",
                  "extra: cloudpickle", "extra: tqdm", "extra: numpy", "extra: dask",
                  "extra: distributed", "extra: psutil", "extra: matplotlib"):
        assert re.search(rf"^{re.escape(label)}: +\S", out, re.M), f"no {label!r} line\n{out}"
    assert re.search(r"^start methods: +.*\bfork\b.*\bspawn\b", out, re.M), out
    assert re.search(r"^default start method: +(fork|spawn|forkserver)$", out, re.M), out
    expected = r"\d\S*" if HAVE_MATPLOTLIB else "not installed"
    assert re.search(rf"^extra: matplotlib: +{expected}$", out, re.M), out


# -- doctor ---------------------------------------------------------------------------------

SECTIONS = ("== /dev/shm ==", "== semaphores ==", "== leaked resources ==",
            "== file descriptors ==", "== start methods ==")


def test_doctor_report() -> None:
    proc = run_cli("doctor")
    out = proc.stdout
    assert proc.returncode in (0, 1), _explain(proc)
    positions = [out.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), out
    failed = re.findall(r"^  FAIL  ", out, re.M)
    # Exit code and verdict agree with the report, and every problem says how to fix it.
    if failed:
        assert proc.returncode == 1, _explain(proc)
        assert re.search(r"^doctor: \d+ problem\(s\)", out, re.M), out
    else:
        assert proc.returncode == 0, _explain(proc)
        assert re.search(r"^doctor: healthy", out, re.M), out
    for m in re.finditer(r"^  (WARN|FAIL)  .*\n(?!        fix: )", out, re.M):
        pytest.fail(f"a {m.group(1)} line without a fix:\n{m.group(0)}\n{out}")
    for method in ("fork", "spawn", "forkserver"):
        assert re.search(rf"^  ok    {method}( \(default\))?: a child started", out, re.M), out


@pytest.fixture
def quick_doctor(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process doctor runs without the (slower) start-method probes, and seeing only the
    /dev/shm entries this test made: another program's entries (a test session running at the
    same time on this machine) are never touched."""
    monkeypatch.setattr(doctor, "check_start_methods", lambda: doctor.Section("start methods"))
    real = doctor.find_entries

    def mine() -> tuple[list[doctor.Entry], list[tuple[int, int, float]], int]:
        entries, running, unreadable = real()
        return [e for e in entries if e.name in OURS], running, unreadable

    monkeypatch.setattr(doctor, "find_entries", mine)


#: Names of the entries the current test made (see ``quick_doctor``).
OURS: set[str] = set()


def test_doctor_exit_code_1_on_a_failed_check(quick_doctor: None, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> doctor.Section:
        sec = doctor.Section("file descriptors")
        sec.add(doctor.FAIL, "RLIMIT_NOFILE: soft limit 64: too low", "raise it")
        return sec

    monkeypatch.setattr(doctor, "check_fds", broken)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "  FAIL  RLIMIT_NOFILE: soft limit 64: too low\n        fix: raise it\n" in out
    assert re.search(r"^doctor: 1 problem\(s\)", out, re.M), out


def test_doctor_force_needs_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--force"]) == 2
    assert "--force only applies with --clean" in capsys.readouterr().err


#: 2001-09-09: older than any resource tracker that can be running.
LONG_AGO = 1_000_000_000.0


@contextlib.contextmanager
def planted(name: str, mtime: float | None = None):
    """A fake polyproc shared-memory entry that no process holds (modified at *mtime*)."""
    import _posixshmem

    fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        os.ftruncate(fd, 4096)
    finally:
        os.close(fd)
    path = "/dev/shm" + name
    OURS.add(name[1:])
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    try:
        yield path
    finally:
        OURS.discard(name[1:])
        with contextlib.suppress(FileNotFoundError):
            _posixshmem.shm_unlink(name)


def _leak_section(out: str) -> str:
    return out.split("== leaked resources ==", 1)[1].split("\n== ", 1)[0]


@pytest.mark.skipif(not HAVE_SHM, reason="no /dev/shm on this platform")
def test_doctor_clean_removes_a_leaked_entry(quick_doctor: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Older than any running resource tracker, so no running program can own it.
    with planted("/pp_doctor_test", mtime=LONG_AGO) as path:
        assert main(["doctor"]) == 1
        section = _leak_section(capsys.readouterr().out)
        assert re.search(r"^  FAIL  1 leaked: .*pp_doctor_test", section, re.M), section
        assert "fix: unlink them with `python -m polyproc doctor --clean`" in section
        assert os.path.exists(path)

        main(["doctor", "--clean"])
        section = _leak_section(capsys.readouterr().out)
        assert re.search(r"^  ok    removed 1 leaked entry .*pp_doctor_test", section, re.M), \
            section
        assert not os.path.exists(path)


@pytest.mark.skipif(not HAVE_SHM, reason="no /dev/shm on this platform")
def test_doctor_spares_entries_a_running_program_may_own(
        quick_doctor: None, capsys: pytest.CaptureFixture[str]) -> None:
    from polyproc._resources import tracker

    tracker.ensure_running()  # this process now counts as a running polyproc program
    with planted("/pp_doctor_test_young") as path:
        main(["doctor", "--clean"])
        section = _leak_section(capsys.readouterr().out)
        assert re.search(r"^  WARN  1 not open in any process, but created while polyproc "
                         r"program\(s\) were running .*pp_doctor_test_young", section, re.M), \
            section
        assert "--clean --force" in section
        assert os.path.exists(path)

        main(["doctor", "--clean", "--force"])
        section = _leak_section(capsys.readouterr().out)
        assert "removed 1 leaked entry" in section, section
        assert not os.path.exists(path)


@pytest.mark.skipif(not HAVE_SHM, reason="no /dev/shm on this platform")
def test_doctor_leaves_entries_in_use_alone(quick_doctor: None,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import polyproc
    from polyproc.shared_memory import SharedMemory

    block = SharedMemory(create=True, size=4096)  # mapped by this process
    lock = polyproc.get_context("spawn").Lock()  # a named semaphore, mapped by this process
    sem_name = "sem." + lock.name.lstrip("/")
    with planted("/pp_doctor_test_open") as open_path:
        fd = os.open(open_path, os.O_RDWR)  # held open, not mapped
        try:
            names = [block.name, sem_name, "pp_doctor_test_open"]
            OURS.update(names)
            for name in names:  # old: only being in use protects them
                os.utime("/dev/shm/" + name, (LONG_AGO, LONG_AGO))
            main(["doctor", "--clean", "--force"])
            section = _leak_section(capsys.readouterr().out)
            assert re.search(rf"^  ok    3 in use by running processes \(pids {os.getpid()}\): ",
                             section, re.M), section
            assert "--clean: nothing to remove" in section, section
            for name in names:
                assert os.path.exists("/dev/shm/" + name), name
        finally:
            os.close(fd)
            OURS.difference_update(names)
            block.close()
            block.unlink()
            del lock


def test_is_polyproc_name() -> None:
    for name in ("pp_0123abcd", "sem.pp-0123abcd", "polyproc-x", "sem.polyproc"):
        assert doctor.is_polyproc_name(name), name
    for name in ("psm_0123", "sem.mp-0123", "pulse-shm-1", "ppx"):
        assert not doctor.is_polyproc_name(name), name


# -- bench ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str],
                                                                  Path | None]:
    """One small real run: the fork start+join case of the foundation benchmark."""
    chart = tmp_path_factory.mktemp("chart") / "bench.png" if HAVE_MATPLOTLIB else None
    args = ["bench", "--quick", "--only", "foundation", "-k", "start+join [fork]"]
    if chart is not None:
        args += ["--chart", str(chart)]
    return run_cli(*args, timeout=110), chart


def test_bench_quick_prints_the_combined_table(bench_run) -> None:
    proc, _chart = bench_run
    assert proc.returncode == 0, _explain(proc)
    out = proc.stdout
    assert out.startswith("# polyproc benchmarks\n"), out
    assert "## Summary: polyproc against the stdlib" in out
    assert re.search(r"^\| benchmark \| case \| unit \| better \| stdlib \| polyproc \| "
                     r"polyproc vs stdlib \|$", out, re.M), out
    row = re.search(r"^\| foundation \| start\+join \[fork\] \| ms \| lower \| ([\d.,]+) \| "
                    r"([\d.,]+) \| ([\d.,]+)x \|$", out, re.M)
    assert row, out
    # The script's own table follows, and only the selected case ran.
    assert "## foundation: process start+join and Pipe" in out
    assert "spawn" not in out.split("## foundation:", 1)[1].split("Ratio columns")[0]
    assert "wrote /tmp/" not in out.replace(str(_chart or ""), "")  # no temp JSON path leaks
    assert "[1/3] start+join [fork]" in proc.stderr  # progress went to stderr


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install "
                                                 "matplotlib) so --chart cannot be tested")
def test_bench_chart_writes_a_png(bench_run) -> None:
    proc, chart = bench_run
    assert proc.returncode == 0, _explain(proc)
    assert chart is not None and chart.is_file(), _explain(proc)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {chart} (1 bar)" in proc.stdout


def test_bench_chart_without_matplotlib_says_how_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench, "have_matplotlib", lambda: False)
    assert main(["bench", "--chart", "x.png"]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_bench_chart_default_path_is_docs_benchmark_png(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen = {}
    fake = bench.ScriptRun("foundation", 0, "", [], {"results": [
        {"case": "c", "kind": "latency", "unit": "ms", "impl": "stdlib", "median": 2.0},
        {"case": "c", "kind": "latency", "unit": "ms", "impl": "polyproc", "median": 1.0},
    ]}, 0.1)
    monkeypatch.setattr(bench, "have_matplotlib", lambda: True)
    monkeypatch.setattr(bench, "run_script", lambda *a, **k: fake)
    monkeypatch.setattr(bench, "write_chart",
                        lambda rows, path, title="": seen.update(path=path, rows=rows) or 1)
    assert main(["bench", "--only", "foundation", "--chart"]) == 0
    assert seen["path"] == ROOT / "docs" / "benchmark.png"
    assert [r.ratio for r in seen["rows"]] == [2.0]
    assert "| foundation | c | ms | lower | 2 | 1 | 2.00x |" in capsys.readouterr().out


def test_bench_reports_missing_benchmarks(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "benchmark scripts were not found" in err and str(tmp_path) in err
    assert "not part of the installed package" in err


def test_bench_only_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--only", "no-such-bench"]) == 2
    err = capsys.readouterr().err
    assert "no benchmark 'no-such-bench'" in err and "foundation" in err


def test_bench_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--list", "--only", "bench_foundation.py", "--only", "queues"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["foundation", "queues"]


def test_summary_respects_a_scripts_na_ratio() -> None:
    table = ("## t\n\n| case | unit | better | stdlib | polyproc | polyproc vs stdlib |\n"
             "| --- | --- | --- | ---: | ---: | ---: |\n"
             "| fast | ms | lower | 4 | 2 | 2.00x |\n"
             "| memory | MB | lower | 500 | 1 | n/a |\n")
    results = []
    for case, std, pp in (("fast", 4.0, 2.0), ("memory", 500.0, 1.0), ("tput", 10.0, 30.0)):
        kind = "throughput" if case == "tput" else "latency"
        results += [{"case": case, "kind": kind, "unit": "u", "impl": "stdlib", "median": std},
                    {"case": case, "kind": kind, "unit": "u", "impl": "polyproc", "median": pp}]
    run = bench.ScriptRun("x", 0, table, [], {"results": results}, 1.0)
    rows = {r.case: r.ratio for r in bench.summary_rows(run)}
    assert rows == {"fast": 2.0, "memory": None, "tput": 3.0}


def test_summary_skips_a_script_with_its_own_json() -> None:
    # bench_dask.py is not built on _harness: its JSON maps row names to samples. The
    # combined report must not crash on it (it did, after every benchmark had run).
    data = {"tasks": 10, "results": {"Dask client.map + gather": [1.0, 2.0]}, "ratio": 2.0}
    run = bench.ScriptRun("dask", 0, "| row | tasks/s |\n| --- | ---: |\n", [], data, 1.0)
    assert bench.summary_rows(run) == []
    text, rows = bench.report([run], quick=False, select=None)
    assert rows == [] and "| row | tasks/s |" in text


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib is not installed")
def test_write_chart(tmp_path: Path) -> None:
    rows = [bench.Row("a", "worse", "ms", "latency", 1, 2, 0.5),
            bench.Row("b", "better", "MB/s", "throughput", 1, 40, 40.0),
            bench.Row("c", "no ratio", "MB", "latency", 1, 1, None)]
    assert bench.write_chart(rows, tmp_path / "out" / "c.png") == 2
    assert (tmp_path / "out" / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert bench.write_chart(rows[2:], tmp_path / "none.png") == 0
    assert not (tmp_path / "none.png").exists()
