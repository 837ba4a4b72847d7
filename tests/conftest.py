"""Shared test setup: leak checks for child processes and /dev/shm entries.

* Session level (automatic): when the last test has run, every child process of the pytest
  process must have exited (after a short grace deadline), and /dev/shm must hold no new
  polyproc entries. A leak makes the session fail with an error that lists what leaked;
  the leaked processes are then killed and the entries unlinked. An entry that a process
  outside the session maps or holds open is another program's (another test session run at
  the same time): it is neither reported nor unlinked.
* Per test (opt-in): request the ``no_leaks`` fixture to check the same after that one test.
* ``method`` / ``ctx``: a test that takes either runs once per start method (fork, spawn,
  forkserver), ``ctx`` being ``polyproc.get_context(method)``. A module may define its own
  (say module-scoped) ``method`` instead.

Long-lived helper servers that live as long as their parent by design (the stdlib's and
polyproc's forkserver, the stdlib's resource tracker) are not counted as leaks; the processes
they started are.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import psutil
import pytest

import polyproc

#: Seconds leaked-looking children and /dev/shm entries get to go away before it counts.
SESSION_GRACE = 10.0
TEST_GRACE = 5.0

SHM_DIR = "/dev/shm"

#: Command-line fragments of helper servers that by design outlive the objects that started them.
HELPER_MARKERS = (
    "multiprocessing.forkserver",
    "multiprocessing.resource_tracker",
    "polyproc._spawn.forkserver",
    "polyproc._resources.tracker",
)


def is_polyproc_shm_name(name: str) -> bool:
    """True for /dev/shm names polyproc owns: containing ``polyproc`` or starting ``pp_``/``pp-``.

    POSIX named semaphores appear as ``sem.<name>``, so that prefix is looked through.
    """
    base = name[4:] if name.startswith("sem.") else name
    return "polyproc" in name or base.startswith(("pp_", "pp-"))


def shm_entries() -> set[str]:
    """The polyproc-owned names currently in /dev/shm (empty where there is no /dev/shm)."""
    try:
        return {name for name in os.listdir(SHM_DIR) if is_polyproc_shm_name(name)}
    except OSError:
        return set()


def held_elsewhere(names: Collection[str]) -> set[str]:
    """The entries among ``names`` that a process outside this test session (not this
    process, not one of its descendants) maps or holds open.

    /dev/shm is machine-wide: other programs, and other test sessions run at the same time,
    create polyproc entries while this session runs. Those are theirs, not leaks of ours,
    and unlinking them would break the programs using them (a child of theirs that opens a
    semaphore by name then gets FileNotFoundError).
    """
    from polyproc._cli import doctor

    entries = {}
    for name in names:
        try:
            st = os.lstat(os.path.join(SHM_DIR, name))
        except OSError:
            continue
        entries[name] = doctor.Entry(name, st.st_uid, st.st_size, 0.0, doctor._file_key(st))
    if not entries:
        return set()
    doctor._find_holders(entries)
    me = psutil.Process()
    ours = {me.pid} | {p.pid for p in me.children(recursive=True)}
    return {name for name, e in entries.items() if e.holders - ours}


def _describe(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
        return f"pid {proc.pid} [{proc.status()}] {cmd[:200]}"
    except psutil.Error:
        return f"pid {proc.pid} (gone)"


def _is_helper(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return any(marker in cmd for marker in HELPER_MARKERS)


def live_children(exclude: Collection[int] = ()) -> list[psutil.Process]:
    """Descendants of this process still running (not zombies), minus *exclude* and helpers."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in exclude:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:  # exited meanwhile
            continue
        if _is_helper(proc):
            continue
        found.append(proc)
    return found


@dataclass
class Snapshot:
    """What existed before: child pids and polyproc /dev/shm names."""

    children: set[int]
    shm: set[str]

    @classmethod
    def take(cls) -> Snapshot:
        """Record the current child processes and polyproc /dev/shm entries."""
        return cls({p.pid for p in psutil.Process().children(recursive=True)}, shm_entries())

    def leaks(self, grace: float) -> list[str]:
        """Poll until nothing new is left or *grace* seconds pass; describe what is left."""
        deadline = time.monotonic() + grace
        delay = 0.01
        while True:
            children = live_children(self.children)
            shm = sorted(shm_entries() - self.shm)
            if shm:
                shm = sorted(set(shm) - held_elsewhere(shm))
            if (not children and not shm) or time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        report = [f"child process still alive: {_describe(p)}" for p in children]
        report += [f"new /dev/shm entry: {SHM_DIR}/{name}" for name in shm]
        _clean_up(children, shm)
        return report


def _clean_up(children: list[psutil.Process], shm: list[str]) -> None:
    """Kill reported children and unlink reported entries, so one leak is reported once and an
    orphan cannot keep the test run's output pipe open."""
    for proc in children:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(children, timeout=5)
    for name in shm:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, name))


def _format(where: str, leaks: list[str], grace: float) -> str:
    lines = "\n  ".join(leaks)
    return f"{where}: {len(leaks)} leak(s) after a {grace:.0f}s grace period:\n  {lines}"


@pytest.fixture(scope="session", autouse=True)
def _session_leak_check() -> Iterator[None]:
    """Fail the session (as a teardown error) if children or /dev/shm entries outlive it."""
    before = Snapshot.take()
    yield
    leaks = before.leaks(SESSION_GRACE)
    if leaks:
        pytest.fail(_format("polyproc leak check at end of test session", leaks, SESSION_GRACE),
                    pytrace=False)


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Opt-in: fail the test if it leaves child processes or new /dev/shm entries behind."""
    before = Snapshot.take()
    yield
    leaks = before.leaks(TEST_GRACE)
    if leaks:
        pytest.fail(_format("leak check after this test", leaks, TEST_GRACE), pytrace=False)


START_METHODS = ("fork", "spawn", "forkserver")


@pytest.fixture(params=START_METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Each start method in turn."""
    return request.param


@pytest.fixture
def ctx(method: str) -> polyproc.context.BaseContext:
    """The polyproc context of ``method``."""
    return polyproc.get_context(method)
