"""A test process of the CPython-suite runner (``polyproc.testing.cpython`` starts it).

``collect``: import the suite's modules, write the test classes and ids as JSON.
``probe``: check that every kind of process sees polyproc under the stdlib's names.
``run``: run the listed tests (all of one class) and write one JSON event per line:
``start``/``end`` per test, ``fixture`` for module/class fixtures, ``note``, ``done``.
A per-test timeout is the runner's job: it reads the events as they come, sends SIGUSR2 (this
process then dumps every thread's stack, through faulthandler) and kills the process group.

Always run with the runner's environment (``_cpython_env``): it refuses to run at all if the
stdlib names do not resolve to polyproc here.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import signal
import sys
import time
import traceback
import unittest
from typing import Any, TextIO

HOOK = "_polyproc_cpython_hook"
EXIT_ALIAS_BROKEN = 4
EXIT_UNAVAILABLE = 5
_TB_LIMIT = 8000


class SuiteUnavailable(Exception):
    """This interpreter does not ship the asked-for suite."""


def suite_modules(suite: str, method: str) -> list[str]:
    """Names of the modules that hold ``suite``'s tests for ``method``."""
    if suite == "multiprocessing":
        base = f"test.test_multiprocessing_{method}"
    else:
        base = "test.test_concurrent_futures"
        if importlib.util.find_spec(base) is None:
            raise SuiteUnavailable(f"this interpreter ({sys.version.split()[0]}) does not "
                                   f"ship {base}")
    module = importlib.import_module(base)
    if not hasattr(module, "__path__"):
        return [base]
    return [f"{base}.{info.name}" for info in sorted(pkgutil.iter_modules(module.__path__),
                                                     key=lambda i: i.name)
            if info.name.startswith("test_")]


def _selected(suite: str, method: str, cls: type) -> bool:
    if suite == "multiprocessing":
        return True
    # test_concurrent_futures: only the process-pool classes of this start method.
    return re.match(rf"ProcessPool{method.capitalize()}(?!server)", cls.__name__) is not None


def _flatten(suite: unittest.TestSuite) -> list[unittest.TestCase]:
    out: list[unittest.TestCase] = []
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out


def collect(suite: str, method: str) -> dict[str, Any]:
    classes: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    loader = unittest.TestLoader()
    for name in suite_modules(suite, method):
        try:
            module = importlib.import_module(name)
        except unittest.SkipTest as exc:
            errors.append({"module": name, "outcome": "skipped", "reason": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001 - a suite module that fails to import
            errors.append({"module": name, "outcome": "error", "reason": _reason(exc),
                           "traceback": traceback.format_exc()[-_TB_LIMIT:]})
            continue
        by_class: dict[type, list[str]] = {}
        for test in _flatten(loader.loadTestsFromModule(module)):
            if type(test).__name__ == "_FailedTest":
                errors.append({"module": name, "outcome": "error", "reason": test.id()})
                continue
            if _selected(suite, method, type(test)):
                by_class.setdefault(type(test), []).append(test.id())
        for cls, ids in by_class.items():
            classes.append({"module": cls.__module__, "class": cls.__name__, "tests": ids})
    return {"classes": classes, "module_errors": errors}


def _reason(exc: BaseException) -> str:
    """The exception's last line, and where it was raised (file:line function)."""
    lines = traceback.format_exception_only(type(exc), exc)
    text = lines[-1].strip()
    if type(exc).__name__ not in text:  # a multi-line message: its first line
        text = next((ln.strip() for ln in lines if type(exc).__name__ in ln), text)
    if len(text) > 300:
        text = text[:297] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        f = frames[-1]
        text += f" [at {os.path.basename(f.filename)}:{f.lineno} {f.name}]"
    return text


class EventResult(unittest.TestResult):
    """Writes each outcome as a JSON line, as it happens (the runner reads it live)."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self._current: str | None = None

    def emit(self, **event: Any) -> None:
        self.out.write(json.dumps(event) + "\n")
        self.out.flush()

    def startTest(self, test: unittest.TestCase) -> None:
        super().startTest(test)
        self._current = test.id()
        self._outcome: tuple[str, str, str] | None = None
        self._subfails: list[tuple[str, str, str]] = []
        self._t0 = time.monotonic()
        self.emit(e="start", id=test.id())

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        if self._subfails:
            kinds = {k for k, _, _ in self._subfails}
            kind = "error" if "error" in kinds else "failed"
            _, reason, tb = self._subfails[0]
            if len(self._subfails) > 1:
                reason += f" (and {len(self._subfails) - 1} more subtests)"
            outcome = (kind, reason, tb)
        else:
            outcome = self._outcome or ("error", "the test recorded no outcome", "")
        self.emit(e="end", id=test.id(), outcome=outcome[0], reason=outcome[1],
                  traceback=outcome[2][-_TB_LIMIT:], seconds=round(time.monotonic() - self._t0, 3))
        self._current = None

    def _exc(self, err: Any, test: Any) -> tuple[str, str]:
        # unittest.TestResult's private formatter (not in the stubs): the stdlib's own text.
        return _reason(err[1]), self._exc_info_to_string(err, test)  # type: ignore[attr-defined]

    def _fixture(self, holder: Any, outcome: str, reason: str, tb: str = "") -> None:
        self.emit(e="fixture", id=holder.id() if hasattr(holder, "id") else str(holder),
                  outcome=outcome, reason=reason, traceback=tb[-_TB_LIMIT:])

    def addSuccess(self, test: unittest.TestCase) -> None:
        self._outcome = ("passed", "", "")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._outcome = ("failed", *self._exc(err, test))

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        if self._current is None or not isinstance(test, unittest.TestCase):
            self._fixture(test, "error", *self._exc(err, test))
        else:
            self._outcome = ("error", *self._exc(err, test))

    def addSkip(self, test: Any, reason: str) -> None:
        if self._current is None or not isinstance(test, unittest.TestCase):
            self._fixture(test, "skipped", reason)
        elif type(test).__name__ != "_SubTest":
            self._outcome = ("skipped", reason, "")

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        self._outcome = ("passed", "expected failure", "")

    def addUnexpectedSuccess(self, test: Any) -> None:
        self._outcome = ("failed", "unexpected success (the test is marked expectedFailure)", "")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        if err is None:
            return
        kind = "failed" if issubclass(err[0], test.failureException) else "error"
        reason, tb = self._exc(err, subtest)
        self._subfails.append((kind, f"{subtest._subDescription()}: {reason}", tb))


def _check_aliases(where: str, out: EventResult | None = None) -> None:
    try:
        hook = importlib.import_module(HOOK)
        problems = hook.verify()
    except Exception as exc:  # noqa: BLE001 - any failure here means: not polyproc
        problems = [f"the alias hook {HOOK} is unusable here: {exc!r}"]
    if problems:
        msg = f"stdlib names do not resolve to polyproc in the {where}: {problems}"
        if out is not None:
            out.emit(e="alias-error", msg=msg)
        print("polyproc.testing.cpython: FATAL: " + msg, file=sys.stderr)
        sys.exit(EXIT_ALIAS_BROKEN)


def default_sigint() -> bool:
    """Give this process Python's KeyboardInterrupt handler if it inherited SIGINT ignored;
    True if it had to.

    A runner started in the background by a non-interactive shell (``cmd &``, nohup, some
    CI) inherits SIGINT ignored, and so does every process it starts: Python then installs
    no KeyboardInterrupt handler. The suites' tests that interrupt themselves (a
    ``Condition.wait`` ended by SIGINT, a ``SharedMemoryManager``'s parent that must still
    get Ctrl-C) expect a test process with Python's default handler, as in a terminal.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return True
    return False


def run(suite: str, method: str, ids: list[str], events: TextIO, stack: TextIO) -> None:
    default_sigint()
    faulthandler.enable(file=stack, all_threads=True)
    faulthandler.register(signal.SIGUSR2, file=stack, all_threads=True, chain=False)
    result = EventResult(events)
    _check_aliases("test process", result)
    tests = []
    for test_id in ids:
        module_name, cls_name, method_name = test_id.rsplit(".", 2)
        module = importlib.import_module(module_name)
        tests.append(getattr(module, cls_name)(method_name))
    for name, why in importlib.import_module(HOOK).GAPS_FILLED.items():
        result.emit(e="gap", name=name, why=why)
    unittest.TestSuite(tests).run(result)
    unittest.suite._call_if_exists(result, "_restoreStdout")  # type: ignore[attr-defined]
    _check_aliases("test process after the tests", result)
    result.emit(e="done")


def probe(out: TextIO) -> None:
    result = EventResult(out)
    _check_aliases("probe process", result)
    from . import _cpython_probe

    for where, required, rep in _cpython_probe.probes():
        result.emit(e="probe", where=where, required=required, report=rep)
    result.emit(e="done")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="polyproc.testing._cpython_worker")
    p.add_argument("mode", choices=["collect", "probe", "run"])
    p.add_argument("--suite", default="multiprocessing")
    p.add_argument("--start-method", default="fork")
    p.add_argument("--ids", help="file with one test id a line (run)")
    p.add_argument("--events", required=True, help="where to write the JSON events/output")
    p.add_argument("--stack", help="where faulthandler writes stacks (run)")
    args = p.parse_args(argv)
    with open(args.events, "a", buffering=1) as out:
        if args.mode == "collect":
            _check_aliases("collecting process")
            try:
                data = collect(args.suite, args.start_method)
            except SuiteUnavailable as exc:
                out.write(json.dumps({"unavailable": str(exc)}))
                return EXIT_UNAVAILABLE
            out.write(json.dumps(data))
        elif args.mode == "probe":
            probe(out)
        else:
            with open(args.ids) as f:
                ids = [line.strip() for line in f if line.strip()]
            with open(args.stack, "a", buffering=1) as stack:
                run(args.suite, args.start_method, ids, out, stack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
