"""Run CPython's own test suites against polyproc: ``python -m polyproc.testing.cpython``.

The suites are the RUNNING interpreter's: ``test._test_multiprocessing`` (through its
``test.test_multiprocessing_{fork,spawn,forkserver}`` packages, or through
``install_tests_in_module_dict`` where the interpreter does not ship those) and, where the
interpreter ships it, ``test.test_concurrent_futures``' process-pool classes
(``ProcessPool{Fork,Forkserver,Spawn}*Test``). The stdlib's names resolve to polyproc in every
process the suites start (see ``_cpython_hook`` and ``_cpython_env``); a probe checks that
before any test runs, each test process checks it again, and the run stops (exit 2) if any
process is found on the stdlib.

Each test class runs in its own process (``--jobs`` at a time, at most 2), each test with a
timeout (a hang is a failure carrying every thread's stack; the class then goes on in a new
process from the next test) and each class with a wall-clock limit. Failing tests listed in
``_cpython_internal`` (they assert CPython's private internals) are reported as "internal" and
not counted as failures.

Examples::

    python -m polyproc.testing.cpython --suite multiprocessing --start-method fork
    python -m polyproc.testing.cpython --suite futures -k test_map --json out.json

Exit status: 0 when nothing failed (internal failures aside), 1 when something did, 2 when the
aliases are broken or the environment could not be built.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from . import _cpython_env
from ._cpython_internal import internal_reason

METHODS = ("fork", "spawn", "forkserver")
SUITES = ("multiprocessing", "futures")
OUTCOMES = ("passed", "failed", "error", "skipped", "internal")
MAX_RESTARTS = 30
_STACK_CAP = 6000  # characters of stacks kept per hung or crashed test
_print_lock = threading.Lock()


class AliasBroken(RuntimeError):
    """A process ran the stdlib instead of polyproc."""


def say(*lines: str) -> None:
    with _print_lock:
        for line in lines:
            print(line, flush=True)


def short_id(test_id: str) -> str:
    """``Class.test_method``; a fixture's ``setUpClass (module.Class)`` becomes
    ``setUpClass (Class)``."""
    if " (" in test_id:
        what, _, where = test_id.partition(" (")
        return f"{what} ({where.rstrip(')').rsplit('.', 1)[-1]})"
    return ".".join(test_id.rsplit(".", 2)[-2:])


def matches(test_id: str, patterns: list[str]) -> bool:
    """unittest's -k: a pattern with no ``*`` is a substring; any pattern may match."""
    if not patterns:
        return True
    for pat in patterns:
        glob = pat if "*" in pat else f"*{pat}*"
        if fnmatchcase(test_id, glob) or fnmatchcase(short_id(test_id), glob):
            return True
    return False


def _worker_cmd(env: _cpython_env.Env, mode: str, *args: str) -> list[str]:
    return [env.python, "-m", "polyproc.testing._cpython_worker", mode, *args]


def _group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes in process group ``pgid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        out.append((int(entry), cmd))
    return out


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End the worker, then its process group (every child it left; all started by us).

    The group gets ``grace`` seconds to go by itself first; then everything but polyproc's
    resource tracker is killed, and the tracker gets ``grace`` more seconds to unlink what
    the killed processes left in /dev/shm before it is killed too.
    """
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    for spare_tracker in (True, False):
        deadline = time.monotonic() + grace
        while True:
            members = (_group_members(proc.pid) if os.path.isdir("/proc")
                       else [(-proc.pid, "")])
            if not members:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for pid, cmd in members:
            if spare_tracker and "polyproc._resources.tracker" in cmd:
                continue
            try:
                os.kill(pid, signal.SIGKILL) if pid > 0 else os.killpg(-pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _one_shot(env: _cpython_env.Env, mode: str, label: str, args: list[str],
              limit: float) -> tuple[int, str, str]:
    """Run a worker in ``mode`` to the end; (exit code, its output file, its log)."""
    work = env.workdir(label)
    out, log = work / "out.json", work / "log.txt"
    with open(log, "w") as logf:
        proc = subprocess.Popen(_worker_cmd(env, mode, "--events", str(out), *args),
                                cwd=work, env=env.env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(limit)
        except subprocess.TimeoutExpired:
            code = -9
        _kill_group(proc)
    text = out.read_text() if out.exists() else ""
    return code, text, log.read_text(errors="replace")


def probe(env: _cpython_env.Env) -> list[dict[str, Any]]:
    """Check every kind of process; raise AliasBroken if a required one is not on polyproc."""
    code, text, log = _one_shot(env, "probe", "probe", [], 600)
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if r.get("e") in ("probe", "alias-error")]
    bad = [r for r in rows if r["e"] == "alias-error"
           or (r["required"] and r["report"].get("problems"))]
    if code != 0 or bad or not rows:
        detail = "\n".join(json.dumps(r) for r in bad) or log[-4000:]
        raise AliasBroken(f"the alias probe failed (exit {code}):\n{detail}")
    return rows


def collect(env: _cpython_env.Env, suite: str, method: str) -> dict[str, Any]:
    code, text, log = _one_shot(env, "collect", f"collect-{suite}-{method}",
                                ["--suite", suite, "--start-method", method], 600)
    if code == 4:
        raise AliasBroken(f"collecting {suite}/{method}:\n{log[-4000:]}")
    try:
        data = json.loads(text)
    except ValueError:
        raise RuntimeError(f"collecting {suite}/{method} failed (exit {code}):\n"
                           f"{log[-4000:]}") from None
    return data


class ClassRun:
    """Runs one test class in worker processes until each of its tests has an outcome."""

    def __init__(self, env: _cpython_env.Env, suite: str, method: str, entry: dict[str, Any],
                 ids: list[str], opts: argparse.Namespace) -> None:
        self.env, self.suite, self.method, self.opts = env, suite, method, opts
        self.entry, self.ids = entry, ids
        self.results: dict[str, dict[str, Any]] = {}
        self.fixtures: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.extra: list[dict[str, Any]] = []
        self.gaps: dict[str, str] = {}

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        restarts = 0
        while True:
            pending = [i for i in self.ids if i not in self.results]
            if not pending:
                break
            left = self.opts.class_timeout - (time.monotonic() - t0)
            if left <= 0 or restarts > MAX_RESTARTS:
                why = ("class wall-clock limit reached" if left <= 0
                       else f"more than {MAX_RESTARTS} worker restarts")
                for i in pending:
                    self._set(i, "error", f"not run: {why}")
                break
            if self._attempt(pending, t0) == "done":
                break
            restarts += 1
        self._reconcile()
        return self._summary(time.monotonic() - t0)

    def _set(self, test_id: str, outcome: str, reason: str, tb: str = "",
             seconds: float = 0.0) -> None:
        self.results[test_id] = {"id": test_id, "outcome": outcome, "reason": reason,
                                 "traceback": tb, "seconds": seconds}

    def _attempt(self, pending: list[str], t0: float) -> str:
        work = self.env.workdir(f"{self.method}-{self.entry['class']}")
        ids_file, events, stack, log = (work / n for n in ("ids.txt", "events.jsonl",
                                                           "stack.txt", "log.txt"))
        ids_file.write_text("\n".join(pending) + "\n")
        events.touch()
        stack.touch()
        args = ["--suite", self.suite, "--start-method", self.method, "--ids", str(ids_file),
                "--stack", str(stack)]
        logf = open(log, "w")
        proc = subprocess.Popen(_worker_cmd(self.env, "run", "--events", str(events), *args),
                                cwd=work, env=self.env.env, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        current: str | None = None
        started = time.monotonic()
        done_at: float | None = None
        killed: str | None = None
        stack_from = 0
        partial = ""
        with open(events) as ev:
            while True:
                exited = proc.poll() is not None
                lines = (partial + ev.read()).split("\n")
                partial = lines.pop()  # "" or a line still being written
                for line in filter(None, lines):
                    event = json.loads(line)
                    kind = event["e"]
                    if kind == "start":
                        current, started = event["id"], time.monotonic()
                        stack_from = stack.stat().st_size
                    elif kind == "end":
                        self._set(event["id"], event["outcome"], event["reason"],
                                  event["traceback"], event["seconds"])
                        current = None
                    elif kind == "fixture":
                        self.fixtures.append(event)
                    elif kind == "note":
                        self.notes.append(event["msg"])
                    elif kind == "gap":
                        self.gaps[event["name"]] = event["why"]
                    elif kind == "alias-error":
                        _kill_group(proc)
                        logf.close()
                        raise AliasBroken(event["msg"])
                    elif kind == "done":
                        done_at = time.monotonic()
                if exited:
                    break
                now = time.monotonic()
                if current is not None and now - started > self.opts.timeout:
                    killed = f"timeout: still running after {self.opts.timeout:g} s"
                elif now - t0 > self.opts.class_timeout:
                    killed = "class wall-clock limit reached while it ran"
                elif done_at is not None and now - done_at > 30:
                    killed = "exit hang"
                if killed:
                    if current is None:
                        stack_from = stack.stat().st_size
                    self._dump_and_kill(proc, stack)
                    break
                time.sleep(0.1)
        _kill_group(proc)  # whatever it left behind
        logf.close()
        code = proc.returncode
        stack_text = stack.read_text(errors="replace")[stack_from:]
        log_tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        if killed == "exit hang":
            self.notes.append("the test process did not exit within 30 s after its last "
                              f"test; stacks:\n{stack_text[-_STACK_CAP:]}")
            return "done"
        if done_at is not None and current is None:
            return "done"
        if current is None and code != 0 and not [i for i in pending if i not in self.results]:
            self.notes.append(f"the test process exited with {code} after its last test "
                              f"(a class/module fixture?); log tail:\n{log_tail}")
            return "done"
        if current is not None:
            if killed:
                self._set(current, "failed", killed, f"stacks of the test process:\n"
                          f"{stack_text[-_STACK_CAP:]}\nlog tail:\n{log_tail}",
                          round(time.monotonic() - started, 3))
            else:
                self._set(current, "error", f"the test process died (exit {code}) during "
                          "the test", f"{stack_text[-_STACK_CAP:]}\nlog tail:\n{log_tail}")
            return "again"
        # Died (or was killed) outside any test: a fixture or an import failed.
        reason = killed or f"the test process exited with {code} outside a test"
        for i in pending:
            if i not in self.results:
                self._set(i, "error", f"not run: {reason}", log_tail)
        return "done"

    def _dump_and_kill(self, proc: subprocess.Popen, stack: Path) -> None:
        size = stack.stat().st_size
        try:
            os.kill(proc.pid, signal.SIGUSR2)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = stack.stat().st_size
            if now > size:
                time.sleep(0.3)
                if stack.stat().st_size == now:
                    break
        _kill_group(proc)

    def _reconcile(self) -> None:
        """Tests left without an outcome take the fixture's (setUpClass/Module failed)."""
        unrun = [i for i in self.ids if i not in self.results]
        for fixture in self.fixtures:
            if unrun and fixture["outcome"] in ("error", "skipped"):
                why = f"{fixture['id']}: {fixture['reason']}"
                for i in unrun:
                    self._set(i, fixture["outcome"], why, fixture.get("traceback", ""))
                unrun = []
            elif fixture["outcome"] == "error":
                self.extra.append({"id": fixture["id"], "outcome": "error",
                                   "reason": fixture["reason"],
                                   "traceback": fixture.get("traceback", ""), "seconds": 0})
        for i in unrun:
            self._set(i, "error", "not run: the test process ended without running it")
        for row in list(self.results.values()) + self.extra:
            if row["outcome"] in ("failed", "error"):
                internal = internal_reason(self.suite, short_id(row["id"]))
                if internal:
                    row["raw_outcome"], row["outcome"] = row["outcome"], "internal"
                    row["internal_because"] = internal

    def _summary(self, seconds: float) -> dict[str, Any]:
        tests = [self.results[i] for i in self.ids] + self.extra
        counts = {k: sum(1 for t in tests if t["outcome"] == k) for k in OUTCOMES}
        return {"module": self.entry["module"], "class": self.entry["class"],
                "counts": counts, "seconds": round(seconds, 1), "tests": tests,
                "notes": self.notes, "gaps": self.gaps}


def format_class(method: str, cls: dict[str, Any], verbose: bool) -> list[str]:
    c = cls["counts"]
    lines = [f"[{method}] {cls['class']}: {c['passed']} passed, {c['failed']} failed, "
             f"{c['error']} errors, {c['skipped']} skipped, {c['internal']} internal "
             f"({cls['seconds']:.1f} s)"]
    for t in cls["tests"]:
        if t["outcome"] in ("failed", "error"):
            tag = "FAIL " if t["outcome"] == "failed" else "ERROR"
            lines.append(f"    {tag} {short_id(t['id'])}: {t['reason']}")
            if verbose and t.get("traceback"):
                lines.extend("        " + ln for ln in t["traceback"].splitlines()[-30:])
    for note in cls["notes"]:
        lines.append("    NOTE  " + note.splitlines()[0])
    return lines


def run_suite(env: _cpython_env.Env, suite: str, method: str,
              opts: argparse.Namespace) -> dict[str, Any]:
    data = collect(env, suite, method)
    if "unavailable" in data:
        say(f"== {suite}/{method}: skipped: {data['unavailable']}")
        return {"suite": suite, "start_method": method, "unavailable": data["unavailable"]}
    entries = []
    for entry in data["classes"]:
        ids = [i for i in entry["tests"] if matches(i, opts.k)]
        if ids:
            entries.append((entry, ids))
    say(f"== {suite}/{method}: {len(entries)} classes, {sum(len(i) for _, i in entries)} "
        f"tests (Python {sys.version.split()[0]})")
    module_errors = data["module_errors"]
    for err in module_errors:
        say(f"[{method}] module {err['module']} {err['outcome']}: {err['reason']}")
    classes: list[dict[str, Any] | None] = [None] * len(entries)

    def one(index: int) -> None:
        entry, ids = entries[index]
        result = ClassRun(env, suite, method, entry, ids, opts).run()
        classes[index] = result
        say(*format_class(method, result, opts.verbose))
        alarms = env.alarms()
        if alarms:
            raise AliasBroken("a process loaded the stdlib multiprocessing:\n"
                              + "\n".join(alarms))

    with ThreadPoolExecutor(max_workers=opts.jobs) as pool:
        for f in [pool.submit(one, i) for i in range(len(entries))]:
            f.result()
    done = [c for c in classes if c is not None]
    totals = {k: sum(c["counts"][k] for c in done) for k in OUTCOMES}
    gaps: dict[str, str] = {}
    for c in done:
        gaps.update(c["gaps"])
    for name, why in sorted(gaps.items()):
        say(f"[{method}] gap filled by the runner (polyproc lacks it): {name}: {why}")
    totals["error"] += sum(1 for e in module_errors if e["outcome"] == "error")
    line = (f"== TOTAL {suite}/{method} (Python {sys.version.split()[0]}): "
            f"{totals['passed']} passed, {totals['failed']} failed, {totals['error']} errors, "
            f"{totals['skipped']} skipped, {totals['internal']} internal")
    say(line)
    return {"suite": suite, "start_method": method, "totals": totals, "classes": done,
            "module_errors": module_errors, "gaps": gaps}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m polyproc.testing.cpython",
        description="Run the running interpreter's CPython multiprocessing / process-pool "
                    "test suites against polyproc.")
    p.add_argument("--suite", choices=SUITES, action="append",
                   help="multiprocessing (test._test_multiprocessing) or futures "
                        "(test.test_concurrent_futures' process pools); default both")
    p.add_argument("--start-method", choices=METHODS, action="append",
                   help="repeatable; default all three, one after the other")
    p.add_argument("-k", action="append", default=[],
                   help="only tests matching (unittest -k: substring or fnmatch pattern on "
                        "the test id); repeatable")
    p.add_argument("--jobs", type=int, default=2, help="classes at a time (1 or 2)")
    p.add_argument("--timeout", type=float, default=90.0,
                   help="per test, seconds (above the suites' own 60 s waits, so that "
                        "their own failure shows first)")
    p.add_argument("--class-timeout", type=float, default=900.0, help="per class, seconds")
    p.add_argument("--json", help="also write every result (with tracebacks) here")
    p.add_argument("--keep", help="build the environment in this directory and keep it "
                                  "(logs of each test process)")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks")
    opts = p.parse_args(argv)
    if not 1 <= opts.jobs <= 2:
        p.error("--jobs must be 1 or 2 (the suites are heavy; this machine class has 2 cores)")
    opts.suite = opts.suite or list(SUITES)
    opts.start_method = opts.start_method or list(METHODS)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if sys.platform == "win32":
        print("polyproc.testing.cpython runs on POSIX only", file=sys.stderr)
        return 2
    try:
        import cloudpickle  # noqa: F401
    except ImportError:
        print(f"polyproc needs cloudpickle: {sys.executable} -m pip install cloudpickle",
              file=sys.stderr)
        return 2
    src = str(Path(__file__).resolve().parents[2])
    env = _cpython_env.build(src, opts.keep)
    report: dict[str, Any] = {"python": sys.version, "executable": sys.executable,
                              "polyproc": src, "runs": []}
    try:
        rows = probe(env)
        say("aliases checked in: " + ", ".join(
            f"{r['where']}{'' if not r['report'].get('problems') else ' (NOT COVERED)'}"
            for r in rows))
        report["probe"] = rows
        for suite in opts.suite:
            for method in opts.start_method:
                report["runs"].append(run_suite(env, suite, method, opts))
    except AliasBroken as exc:
        print(f"polyproc.testing.cpython: FATAL: {exc}", file=sys.stderr)
        return 2
    finally:
        if opts.json:
            Path(opts.json).write_text(json.dumps(report, indent=1))
        if not opts.keep:
            env.close()
    bad = sum(r["totals"]["failed"] + r["totals"]["error"] for r in report["runs"]
              if "totals" in r)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
