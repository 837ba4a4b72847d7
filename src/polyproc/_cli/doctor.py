"""``python -m polyproc doctor``: check that this machine can run polyproc, and say how to fix it.

Checks, each in its own section:

* ``/dev/shm``: exists, is writable, its size and free space (named ``SharedMemory`` blocks and
  named semaphores live there); anonymous shared memory (``memfd``), used for queues, pools and
  ``Value``/``Array``, can be created.
* semaphores: a named POSIX semaphore can be created and unlinked; the limits that apply.
* leaked resources: polyproc's entries in ``/dev/shm`` (``pp_*``, ``sem.pp-*``, names containing
  ``polyproc``) that no running process has open or mapped. Such an entry is *leaked* when it
  is older than every running polyproc resource tracker of its owner (no running program can
  own it); one that is newer *may* belong to a running program, whose tracker will unlink it
  when that program exits. ``--clean`` unlinks the leaked ones (``--force``: those too).
* file descriptors: the ``RLIMIT_NOFILE`` limits.
* start methods: ``fork``, ``spawn`` and ``forkserver`` each start a child (in a fresh
  interpreter, with a deadline), and how long it took.

Every problem comes with how to fix it. Exit code: 0 when healthy (warnings allowed), 1 when
a check failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SHM_DIR = "/dev/shm"
OK, INFO, WARN, FAIL = "ok", "info", "WARN", "FAIL"
MIB = 1 << 20

#: Below this much free space in /dev/shm, creating named shared memory is likely to fail.
SHM_FREE_FAIL = 1 * MIB
#: Below this total size (Docker's default is 64 MiB), large SharedMemory blocks will not fit.
SHM_SIZE_WARN = 256 * MIB
#: RLIMIT_NOFILE soft limits below these make pools with many workers run out of fds.
NOFILE_FAIL = 256
NOFILE_WARN = 1024
#: Seconds a start-method check may take (a fresh interpreter plus one child).
START_TIMEOUT = 60.0
#: A tracker's start time is derived from whole seconds: leave a margin on the safe side.
TRACKER_MARGIN = 2.0

TRACKER_MARKER = "polyproc._resources.tracker"


@dataclass
class Check:
    """One line of the report; ``fix`` says what to do about a WARN or FAIL."""

    status: str
    message: str
    fix: str = ""


@dataclass
class Section:
    title: str
    checks: list[Check] = field(default_factory=list)

    def add(self, status: str, message: str, fix: str = "") -> None:
        self.checks.append(Check(status, message, fix))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def is_polyproc_name(name: str) -> bool:
    """True for /dev/shm names polyproc makes: ``pp_*`` (shared memory), ``sem.pp-*``
    (semaphores), or anything containing ``polyproc``."""
    base = name[4:] if name.startswith("sem.") else name
    return "polyproc" in name or base.startswith(("pp_", "pp-"))


# -- /dev/shm and memfd ---------------------------------------------------------------------


def _mount_type(path: str) -> str | None:
    try:
        with open("/proc/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[1] == path:
            found = parts[2]  # the last mount on a path is the one in effect
    return found


def check_shm() -> Section:
    sec = Section("/dev/shm")
    if not os.path.isdir(SHM_DIR):
        if sys.platform == "darwin":
            sec.add(INFO, "no /dev/shm on macOS: POSIX shared memory and semaphores live in "
                          "the kernel (their limits are the kern.sysv/posix sysctls)")
        else:
            sec.add(FAIL, f"{SHM_DIR} does not exist: named SharedMemory blocks and "
                          "semaphores (Lock, Queue under spawn/forkserver, ...) cannot be created",
                    "mount a tmpfs there: `mount -t tmpfs -o size=1g tmpfs /dev/shm` (in Docker, "
                    "run the container with `--shm-size=1g` or `--ipc=host`)")
    else:
        kind = _mount_type(SHM_DIR)
        st = os.statvfs(SHM_DIR)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        what = f"{SHM_DIR} ({kind or 'mount type unknown'}): size {_size(total)}, " \
               f"free {_size(free)}"
        if not os.access(SHM_DIR, os.W_OK | os.X_OK):
            sec.add(FAIL, f"{what}; not writable by this user (uid {os.getuid()})",
                    f"make it world-writable with the sticky bit: `chmod 1777 {SHM_DIR}`")
        elif free < SHM_FREE_FAIL:
            sec.add(FAIL, f"{what}: full",
                    "free space: look for leaked entries below (`python -m polyproc doctor "
                    f"--clean`) and large files in {SHM_DIR}, or enlarge it: `mount -o "
                    f"remount,size=2g {SHM_DIR}` (Docker: `--shm-size=2g`)")
        elif total < SHM_SIZE_WARN:
            sec.add(WARN, f"{what}: small (Docker's default is 64 MiB); a process writing more "
                          "than the free space into SharedMemory blocks dies of SIGBUS "
                          "(Bus error)",
                    f"enlarge it: `mount -o remount,size=2g {SHM_DIR}` as root, or run the "
                    "container with `--shm-size=2g` (or `--ipc=host`). Pools, queues and "
                    "Value/Array do not use /dev/shm and are not affected")
        else:
            sec.add(OK, what)
    memfd = getattr(os, "memfd_create", None)
    if memfd is None:
        sec.add(INFO, "os.memfd_create is not available: polyproc's anonymous shared memory "
                      "(queues, pools, Value/Array) uses unlinked temporary files instead")
    else:
        try:
            fd = memfd("polyproc-doctor", getattr(os, "MFD_CLOEXEC", 0))
            try:
                os.ftruncate(fd, MIB)
            finally:
                os.close(fd)
        except OSError as e:
            sec.add(FAIL, f"anonymous shared memory (memfd_create) fails: {e}",
                    "queues, pools and Value/Array need it: check the memory cgroup limit "
                    "and that seccomp (e.g. a container profile) allows memfd_create")
        else:
            sec.add(OK, "anonymous shared memory (memfd_create) works: queues, pools and "
                        "Value/Array use it, nothing of theirs appears in /dev/shm")
    return sec


# -- semaphores -----------------------------------------------------------------------------


def check_semaphores() -> Section:
    sec = Section("semaphores")
    try:
        import _multiprocessing

        name = f"/pp-doctor-{os.getpid()}-{os.urandom(4).hex()}"
        # kind 1 = SEMAPHORE; unlink=True removes the name right after creating it.
        sem = _multiprocessing.SemLock(1, 1, 1, name, True)
        sem.acquire()
        sem.release()
        del sem
    except ImportError as e:
        sec.add(FAIL, f"the _multiprocessing extension is missing ({e}): no process-shared "
                      "semaphores, so no Lock, Queue or Pool",
                "use a CPython build that includes _multiprocessing (most distributions do; "
                "some minimal builds and sandboxes drop it)")
    except OSError as e:
        fix = "check that /dev/shm is mounted and writable (see above)"
        if sys.platform.startswith("linux"):
            fix += "; in a container, mount a tmpfs on /dev/shm or run with `--ipc=host`"
        sec.add(FAIL, f"a named POSIX semaphore cannot be created: {e}", fix)
    else:
        sec.add(OK, "a named POSIX semaphore can be created, used and unlinked")
    try:
        value_max = os.sysconf("SC_SEM_VALUE_MAX")
        nsems = os.sysconf("SC_SEM_NSEMS_MAX")
    except (ValueError, OSError):
        pass
    else:
        nsems_text = "no limit" if nsems < 0 else str(nsems)
        sec.add(INFO, f"POSIX semaphores: SEM_VALUE_MAX {value_max}, SEM_NSEMS_MAX "
                      f"{nsems_text} (each named semaphore is a small file in {SHM_DIR} and one "
                      "memory mapping)")
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            max_maps = int(f.read())
    except (OSError, ValueError):
        pass
    else:
        if max_maps < 65530:
            sec.add(WARN, f"vm.max_map_count is {max_maps}: each semaphore and each attached "
                          "SharedMemory block takes one mapping",
                    "raise it: `sysctl -w vm.max_map_count=262144`")
        else:
            sec.add(OK, f"vm.max_map_count {max_maps} (each semaphore and attached "
                        "SharedMemory block takes one memory mapping)")
    try:
        with open("/proc/sys/kernel/sem") as f:
            semmsl, semmns, semopm, semmni = f.read().split()
    except (OSError, ValueError):
        pass
    else:
        sec.add(INFO, f"System V semaphore limits (/proc/sys/kernel/sem): SEMMSL {semmsl}, "
                      f"SEMMNS {semmns}, SEMOPM {semopm}, SEMMNI {semmni}; polyproc uses POSIX "
                      "semaphores, which these do not limit")
    return sec


# -- leaked resources -----------------------------------------------------------------------


@dataclass
class Entry:
    """A polyproc-looking name in /dev/shm and what we know about it."""

    name: str
    uid: int
    size: int
    created_before: float  # min(mtime, ctime): the entry was created no later than this
    key: tuple[int, int, int] = (0, 0, 0)  # (device major, minor, inode)
    holders: set[int] = field(default_factory=set)
    state: str = ""  # "in use", "leaked", "maybe", "foreign"


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _start_time(pid: int, boot: float) -> float | None:
    """When process *pid* started (epoch seconds), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return None


def trackers() -> list[tuple[int, int, float]]:
    """Running polyproc resource trackers as ``(pid, uid, start time)``."""
    boot = _boot_time()
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if TRACKER_MARKER not in cmd or pid == os.getpid():
            continue
        start = _start_time(pid, boot) if boot is not None else None
        found.append((pid, uid, start if start is not None else float("inf")))
    return found


def _file_key(st: os.stat_result) -> tuple[int, int, int]:
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def _find_holders(entries: dict[str, Entry]) -> int:
    """Fill ``holders`` of each entry with the pids that map it or hold it open; return how
    many processes could not be inspected.

    Files are matched by device and inode, not by path: glibc's ``sem_open`` maps a semaphore
    under a temporary name that it then renames, so ``/proc/PID/maps`` shows a deleted file
    for a semaphore that is in use.
    """
    by_key = {e.key: e for e in entries.values()}
    prefix = SHM_DIR + "/"
    unreadable = 0
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    parts = line.split(maxsplit=5)
                    if len(parts) < 5 or parts[4] == "0":
                        continue
                    major, _, minor = parts[3].partition(":")
                    try:
                        key = (int(major, 16), int(minor, 16), int(parts[4]))
                    except ValueError:
                        continue
                    entry = by_key.get(key)
                    if entry is not None:
                        entry.holders.add(pid)
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                link = os.path.join(fd_dir, fd)
                try:
                    if not os.readlink(link).startswith(prefix):
                        continue
                    entry = by_key.get(_file_key(os.stat(link)))
                except OSError:
                    continue
                if entry is not None:
                    entry.holders.add(pid)
        except FileNotFoundError:
            continue  # exited meanwhile
        except OSError:
            unreadable += 1
    return unreadable


def find_entries() -> tuple[list[Entry], list[tuple[int, int, float]], int]:
    """polyproc's /dev/shm entries, classified; the running trackers; uninspectable pids."""
    try:
        names = sorted(n for n in os.listdir(SHM_DIR) if is_polyproc_name(n))
    except OSError:
        return [], [], 0
    entries: dict[str, Entry] = {}
    for name in names:
        try:
            st = os.lstat(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            continue
        entries[name] = Entry(name, st.st_uid, st.st_size, min(st.st_mtime, st.st_ctime),
                              _file_key(st))
    if not entries:
        return [], trackers(), 0
    unreadable = _find_holders(entries)
    running = trackers()
    me = os.geteuid()
    for e in entries.values():
        if e.holders:
            e.state = "in use"
        elif me != 0 and e.uid != me:
            e.state = "foreign"  # another user's: we can neither inspect nor unlink it
        elif any(uid == e.uid and e.created_before >= start - TRACKER_MARGIN
                 for _pid, uid, start in running):
            e.state = "maybe"
        else:
            e.state = "leaked"
    return list(entries.values()), running, unreadable


def _unlink(name: str) -> None:
    os.unlink(os.path.join(SHM_DIR, name))


def check_leaks(clean: bool, force: bool) -> Section:
    sec = Section("leaked resources")
    if not os.path.isdir(SHM_DIR):
        sec.add(INFO, f"no {SHM_DIR} here: nothing to look for")
        return sec
    if not os.path.isdir("/proc/self/fd"):
        count = sum(is_polyproc_name(n) for n in os.listdir(SHM_DIR))
        sec.add(INFO, f"{count} polyproc entr{'y' if count == 1 else 'ies'} in {SHM_DIR}; "
                      "without /proc, which are still in use cannot be told, so none is "
                      "reported as leaked or removed")
        return sec
    entries, running, unreadable = find_entries()
    if not entries:
        sec.add(OK, f"no polyproc entries in {SHM_DIR}")
        return sec
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.state, []).append(e)

    def names(es: list[Entry], limit: int = 8) -> str:
        shown = ", ".join(e.name for e in es[:limit])
        return shown + (f", ... ({len(es) - limit} more)" if len(es) > limit else "")

    if "in use" in groups:
        es = groups["in use"]
        pids = sorted({p for e in es for p in e.holders})
        sec.add(OK, f"{len(es)} in use by running processes (pids "
                    f"{', '.join(map(str, pids[:8]))}{', ...' if len(pids) > 8 else ''}): "
                    f"{names(es)}")
    if "foreign" in groups:
        es = groups["foreign"]
        sec.add(INFO, f"{len(es)} owned by other users, not inspected (run as root to check "
                      f"them): {names(es)}")
    to_remove = list(groups.get("leaked", []))
    if force:
        to_remove += groups.get("maybe", [])
    if "maybe" in groups and not force:
        es = groups["maybe"]
        owners = {e.uid for e in es}
        pids = sorted(p for p, uid, _start in running if uid in owners)
        sec.add(WARN, f"{len(es)} not open in any process, but created while polyproc "
                      f"program(s) were running (resource tracker pids "
                      f"{', '.join(map(str, pids[:8]))}); such a program may still use them, "
                      f"and its tracker unlinks them when it exits: {names(es)}",
                "wait for those programs to exit, or unlink these now with "
                "`python -m polyproc doctor --clean --force`")
    if unreadable and ("leaked" in groups or "maybe" in groups):
        why = ("permission denied even to root, as in some sandboxes" if os.geteuid() == 0
               else "permission denied: run as root for a complete check")
        sec.add(INFO, f"{unreadable} process(es) could not be inspected ({why}); an entry "
                      "only they use would look unused")
    leaked = groups.get("leaked", [])
    if clean and not to_remove:
        sec.add(OK, "--clean: nothing to remove")
    elif clean:
        removed, failed = [], []
        for e in to_remove:
            try:
                _unlink(e.name)
                removed.append(e)
            except FileNotFoundError:
                removed.append(e)  # gone meanwhile
            except OSError as err:
                failed.append(f"{e.name}: {err.strerror}")
        if removed:
            sec.add(OK, f"removed {len(removed)} leaked entr{'y' if len(removed) == 1 else 'ies'} "
                        f"({_size(sum(e.size for e in removed))}): {names(removed)}")
        if failed:
            sec.add(FAIL, f"could not remove {len(failed)}: {'; '.join(failed[:8])}",
                    "remove them as their owner or as root")
    elif leaked:
        sec.add(FAIL, f"{len(leaked)} leaked: no process has them open and no running polyproc "
                      f"program can own them ({_size(sum(e.size for e in leaked))}): "
                      f"{names(leaked)}",
                "unlink them with `python -m polyproc doctor --clean`. They are left behind "
                "when a program's resource tracker is killed too (kill -9 of the whole process "
                "group, the OOM killer, a container stop); normally the tracker unlinks what a "
                "dead program leaves")
    return sec


# -- file descriptors -----------------------------------------------------------------------


def check_fds() -> Section:
    sec = Section("file descriptors")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd")
                                else "/dev/fd"))
        used = f", {in_use} open in this process"
    except OSError:
        used = ""

    def fmt(n: int) -> str:
        return "unlimited" if n == resource.RLIM_INFINITY else str(n)

    what = f"RLIMIT_NOFILE: soft limit {fmt(soft)}, hard limit {fmt(hard)}{used}"
    raise_it = (f"raise it: `ulimit -n {fmt(hard) if hard != resource.RLIM_INFINITY else 65536}`"
                " in the shell that starts the program, or in the program: "
                "`resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))` with `hard` from "
                "`resource.getrlimit`; the hard limit itself is raised in "
                "/etc/security/limits.conf (or the container's `--ulimit nofile=...`)")
    if soft != resource.RLIM_INFINITY and soft < NOFILE_FAIL:
        sec.add(FAIL, f"{what}: too low: every worker, pipe, queue and connection takes fds",
                raise_it)
    elif soft != resource.RLIM_INFINITY and soft < NOFILE_WARN:
        sec.add(WARN, f"{what}: pools with many workers or programs with many connections "
                      "can run out (OSError: [Errno 24] Too many open files)", raise_it)
    else:
        sec.add(OK, what)
    return sec


# -- start methods --------------------------------------------------------------------------

_START_PROBE = """
import os, sys, time
import polyproc
ctx = polyproc.get_context(sys.argv[1])
t0 = time.perf_counter()
p = ctx.Process(target=os.getpid)
p.start()
p.join(float(sys.argv[2]))
if p.exitcode is None:
    p.kill()
    p.join()
    print("the child did not exit in time", file=sys.stderr)
    sys.exit(3)
if p.exitcode != 0:
    print(f"the child exited with code {p.exitcode}", file=sys.stderr)
    sys.exit(4)
print(f"{(time.perf_counter() - t0) * 1e3:.0f}")
"""

_START_FIX = {
    "fork": "fork needs free memory and process slots: check `ulimit -u` and the memory "
            "limit; meanwhile use spawn: `polyproc.set_start_method('spawn')`",
    "spawn": "spawn runs a fresh `{exe}` that must import polyproc: check that it runs and "
             "that polyproc is installed for it (or on PYTHONPATH)",
    "forkserver": "forkserver starts a server from `{exe}` and talks to it over a Unix socket "
                  "in a temporary directory: check that $TMPDIR is writable and that the "
                  "interpreter imports polyproc; meanwhile use fork or spawn",
}


def _probe_env() -> dict[str, str]:
    env = dict(os.environ)
    import polyproc

    src = str(Path(polyproc.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def check_start_methods() -> Section:
    sec = Section("start methods")
    try:
        import polyproc

        methods = list(polyproc.get_all_start_methods())
        default = polyproc.get_start_method(allow_none=True) or methods[0]
    except Exception as e:  # a broken install is itself the finding
        sec.add(FAIL, f"polyproc cannot list its start methods: {type(e).__name__}: {e}",
                "reinstall polyproc: `pip install -e .` from the clone")
        return sec
    env = _probe_env()
    for method in ("fork", "spawn", "forkserver"):
        label = f"{method}{' (default)' if method == default else ''}"
        if method not in methods:
            sec.add(INFO, f"{label}: not available on this platform")
            continue
        cmd = [sys.executable, "-c", _START_PROBE, method, str(START_TIMEOUT / 2)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT,
                                  env=env, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            sec.add(FAIL, f"{label}: starting a child did not finish within "
                          f"{START_TIMEOUT:.0f} s", _START_FIX[method].format(exe=sys.executable))
            continue
        if proc.returncode == 0:
            ms = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "?"
            extra = ", including the fork server's start" if method == "forkserver" else ""
            sec.add(OK, f"{label}: a child started and exited cleanly ({ms} ms{extra})")
        else:
            last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            sec.add(FAIL, f"{label}: cannot start a child: {last[:300]}",
                    _START_FIX[method].format(exe=sys.executable))
    return sec


# -- report ---------------------------------------------------------------------------------


def _print_section(sec: Section) -> None:
    print(f"\n== {sec.title} ==")
    for c in sec.checks:
        print(f"  {c.status:<4}  {c.message}")
        if c.fix and c.status in (WARN, FAIL):
            print(f"        fix: {c.fix}")
    sys.stdout.flush()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clean", action="store_true",
                        help="unlink leaked polyproc entries in /dev/shm (those no process has "
                             "open and no running polyproc program can own)")
    parser.add_argument("--force", action="store_true",
                        help="with --clean, also unlink unused entries created while a polyproc "
                             "program was running (it may still need them)")


def run(args: argparse.Namespace) -> int:
    """Run every check, print the report; return 0 if healthy, 1 if a check failed."""
    from .info import polyproc_version

    if args.force and not args.clean:
        print("doctor: --force only applies with --clean", file=sys.stderr)
        return 2
    print(f"polyproc doctor: polyproc {polyproc_version()}, Python "
          f"{platform.python_version()}, {platform.platform()}", flush=True)
    t0 = time.monotonic()
    sections = []
    for check in (check_shm, check_semaphores, lambda: check_leaks(args.clean, args.force),
                  check_fds, check_start_methods):
        sec = check()
        _print_section(sec)
        sections.append(sec)
    checks = [c for s in sections for c in s.checks]
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    print()
    if failed:
        print(f"doctor: {failed} problem(s), {warned} warning(s): see `fix:` above "
              f"({time.monotonic() - t0:.1f} s)")
        return 1
    print(f"doctor: healthy ({warned} warning(s); {time.monotonic() - t0:.1f} s)")
    return 0
