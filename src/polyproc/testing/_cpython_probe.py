"""Probes run by the CPython-suite runner: does every kind of process it can start see
polyproc under the stdlib's names? Each returns ``_polyproc_cpython_hook.report()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

HOOK = "_polyproc_cpython_hook"


def report() -> dict[str, Any]:
    import importlib

    return importlib.import_module(HOOK).report()


def send_report(conn: Any) -> None:
    conn.send(report())
    conn.close()


class ProbeObject:
    """Made in a manager's server process; ``report()`` runs there."""

    def report(self) -> dict[str, Any]:
        return report()


_SUBPROCESS_CODE = (
    "import json, multiprocessing, sys\n"  # multiprocessing first: under -S that loads the shim
    f"import {HOOK} as h\n"
    "print(json.dumps(h.report()))\n"
)
_SUBPROCESS_FUTURES_FIRST = (
    "import json, sys\n"
    "from concurrent.futures import ProcessPoolExecutor\n"
    "import multiprocessing\n"
    f"import {HOOK} as h\n"
    "print(json.dumps(h.report()))\n"
)


def _subprocess(flags: list[str], code: str, alarm: bool = True) -> dict[str, Any]:
    env = dict(os.environ)
    if not alarm:  # a case known not to be covered: not a reason to stop the run
        env.pop("POLYPROC_CPYTHON_ALARM", None)
    res = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"problems": [f"exit {res.returncode}: {tail}"]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def probes() -> list[tuple[str, bool, dict[str, Any]]]:
    """(where, required, report) for each kind of process; required ones must be clean."""
    import concurrent.futures as cf
    import importlib

    # The aliased names (the hook is installed in this process): polyproc's modules.
    multiprocessing = importlib.import_module("multiprocessing")
    importlib.import_module("multiprocessing.managers")

    out: list[tuple[str, bool, dict[str, Any]]] = [("test process", True, report())]
    for method in ("fork", "spawn", "forkserver"):
        ctx = multiprocessing.get_context(method)
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=send_report, args=(w,))
        p.start()
        w.close()
        out.append((f"{method} child", True, r.recv() if r.poll(120) else
                    {"problems": ["no report within 120 s"]}))
        p.join(60)
        with ctx.Pool(1) as pool:
            out.append((f"{method} Pool worker", True, pool.apply(report)))
        with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
            out.append((f"{method} ProcessPoolExecutor worker", True,
                        ex.submit(report).result(timeout=120)))

    base_manager: Any = multiprocessing.managers.BaseManager  # the aliased one: polyproc's

    class _Manager(base_manager):
        pass

    _Manager.register("probe", ProbeObject)
    with _Manager() as m:
        out.append(("manager server process", True, m.probe().report()))
    for flags in (["-E"], ["-I"], ["-E", "-S"]):
        name = f"python {' '.join(flags)} subprocess"
        out.append((name, flags != ["-E", "-S"], _subprocess(flags, _SUBPROCESS_CODE)))
    out.append(("python -E -S subprocess importing concurrent.futures first", False,
                _subprocess(["-E", "-S"], _SUBPROCESS_FUTURES_FIRST, alarm=False)))
    return out
