"""``python -m polyproc demo``: the classic multiprocessing examples, run against polyproc.

Each part runs in its own section. A part whose feature polyproc does not have yet prints
``<name>: not yet available (coming in a later milestone)`` and the demo goes on; any other
error is printed with its traceback and makes the exit code 1.

Everything that runs in a child process is a module-level function of this module, so the
``spawn`` and ``forkserver`` start methods can import it by name.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator

#: Seconds any single wait in the demo may take before it is reported as a failure.
WAIT = 60.0

#: Big numbers for the executor part: five primes and one product of two primes.
BIG_NUMBERS = (
    1_000_000_000_039,
    2_147_483_647_013,
    1_099_511_627_791,
    999_999_999_989,
    1_000_000_007 * 1_000_003,
    99_999_999_907,
)

#: Exceptions meaning "this polyproc feature does not exist yet".
NOT_YET = (ImportError, AttributeError, NotImplementedError)


# -- functions run in child processes --------------------------------------------------------


def square(x: int) -> int:
    """Return ``x * x`` (Pool part)."""
    return x * x


def is_prime(n: int) -> bool:
    """Trial-division primality test, slow on purpose (executor part)."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    for divisor in range(3, math.isqrt(n) + 1, 2):
        if n % divisor == 0:
            return False
    return True


def show_ids() -> None:
    """Print this process's pid, its OS parent pid and polyproc's idea of its parent."""
    import polyproc

    parent = polyproc.parent_process()
    print(
        f"  child:  pid={os.getpid()} os.getppid()={os.getppid()} "
        f"parent_process().pid={parent.pid if parent is not None else None}",
        flush=True,
    )


def put_greeting(q, method: str) -> None:
    """Put one greeting naming the start method on queue *q* (Queue part)."""
    q.put(f"hello from a {method} child (pid {os.getpid()})")


def greet(method: str) -> None:
    """Print a greeting from a child started with *method* (context part)."""
    import polyproc

    print(f"  child:  hello from {polyproc.current_process().name} "
          f"started with {method!r} (pid {os.getpid()})", flush=True)


def pipe_echo(conn) -> None:
    """Receive one object on *conn*, send back a reply built from it, close (Pipe part)."""
    obj = conn.recv()
    conn.send(("echo", obj, os.getpid()))
    conn.close()


# -- the parts -------------------------------------------------------------------------------


class _Outcome:
    """Counts of parts that ran, were not yet available, or failed."""

    def __init__(self) -> None:
        self.ok = 0
        self.missing = 0
        self.failed = 0


@contextlib.contextmanager
def _part(name: str, outcome: _Outcome) -> Iterator[None]:
    """Boundary of one demo part: a missing feature is reported, any other error is counted."""
    try:
        yield
    except NOT_YET as exc:
        outcome.missing += 1
        print(f"{name}: not yet available (coming in a later milestone)")
        print(f"  ({type(exc).__name__}: {exc})")
    except Exception:
        outcome.failed += 1
        print(f"{name}: FAILED")
        traceback.print_exc(file=sys.stdout)
    else:
        outcome.ok += 1
    finally:
        sys.stdout.flush()


def _heading(title: str) -> None:
    print()
    print(f"== {title} ==", flush=True)


def _join(p, what: str) -> None:
    """Join *p* with a deadline and check it exited cleanly."""
    p.join(WAIT)
    if p.exitcode is None:
        p.terminate()
        p.join(WAIT)
        raise RuntimeError(f"{what}: child did not exit within {WAIT:.0f}s")
    if p.exitcode != 0:
        raise RuntimeError(f"{what}: child exited with code {p.exitcode}")


def part_pool() -> None:
    """Pool.map of squares over range(10)."""
    import polyproc

    with polyproc.Pool(2) as pool:
        print(f"  Pool(2).map(square, range(10)) = {pool.map(square, range(10))}")


def part_executor() -> None:
    """ProcessPoolExecutor testing big numbers for primality."""
    import polyproc.futures

    with polyproc.futures.ProcessPoolExecutor(max_workers=2) as executor:
        for n, prime in zip(BIG_NUMBERS, executor.map(is_prime, BIG_NUMBERS), strict=True):
            print(f"  {n} is prime: {prime}")


def part_process() -> None:
    """A Process printing its parent's pid and its own."""
    import polyproc

    print(f"  parent: pid={os.getpid()}", flush=True)
    p = polyproc.Process(target=show_ids)
    p.start()
    _join(p, "Process")
    print(f"  parent: child {p.pid} exited with code {p.exitcode}")


def part_queue(method: str) -> None:
    """A Queue shared with a child started by *method*."""
    import polyproc

    ctx = polyproc.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=put_greeting, args=(q, method))
    p.start()
    print(f"  {method}: {q.get(timeout=WAIT)}")
    _join(p, f"Queue ({method})")


def part_context() -> None:
    """get_context('spawn') running a Process."""
    import polyproc

    ctx = polyproc.get_context("spawn")
    p = ctx.Process(target=greet, args=("spawn",))
    p.start()
    _join(p, "spawn context")
    print(f"  parent: spawn child exited with code {p.exitcode}")


def part_pipe() -> None:
    """A Pipe between parent and child: send an object, receive the echo."""
    import polyproc

    parent_conn, child_conn = polyproc.Pipe()
    p = polyproc.Process(target=pipe_echo, args=(child_conn,))
    p.start()
    child_conn.close()
    parent_conn.send([42, None, "hello"])
    if not parent_conn.poll(WAIT):
        raise RuntimeError(f"Pipe: no reply within {WAIT:.0f}s")
    tag, obj, pid = parent_conn.recv()
    print(f"  parent received {(tag, obj)!r} from child pid {pid}")
    parent_conn.close()
    _join(p, "Pipe")


def _start_methods() -> list[str]:
    import polyproc

    return list(polyproc.get_all_start_methods())


def run() -> int:
    """Run every part; return 0 unless a part failed for a reason other than a missing feature."""
    outcome = _Outcome()
    parts: list[tuple[str, str, Callable[[], None]]] = [
        ("1. Pool: squares", "Pool", part_pool),
        ("2. ProcessPoolExecutor: big primes", "ProcessPoolExecutor", part_executor),
        ("3. Process: parent and child pids", "Process", part_process),
    ]
    print(f"polyproc demo (Python {sys.version.split()[0]}, pid {os.getpid()})")
    for title, name, fn in parts:
        _heading(title)
        with _part(name, outcome):
            fn()

    _heading("4. Queue under each start method")
    methods: list[str] = []
    with _part("get_all_start_methods", outcome):
        methods = _start_methods()
    for method in methods:
        with _part(f"Queue[{method}]", outcome):
            part_queue(method)

    for title, name, fn in [
        ("5. get_context('spawn'): a Process", "get_context('spawn')", part_context),
        ("6. Pipe: parent <-> child", "Pipe", part_pipe),
    ]:
        _heading(title)
        with _part(name, outcome):
            fn()

    print()
    print(f"demo finished: {outcome.ok} ran, {outcome.missing} not yet available, "
          f"{outcome.failed} failed", flush=True)
    return 1 if outcome.failed else 0
