"""The forkserver start method: a server process, started once per parent, forks children.

The server is a fresh interpreter that imports the preload modules (by default the parent's
main module) once. The parent talks to it over a private socketpair: each request carries, with
SCM_RIGHTS, the read end of the child's data pipe, the write end of the child's status pipe, the
parent's current stdout and stderr (so the child's output goes where the parent's goes now, as
with fork and spawn) and any fds the Process carries. The server forks, answers with the pid, and when the child exits
writes its exit code into the status pipe: the parent's sentinel is that pipe's read end.
"""

from __future__ import annotations

import array
import errno
import os
import pickle
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .. import util
from ._popen import (
    _REPORT_MAX,
    PopenBase,
    after_fork_in_child,
    child_command,
    exit_forked_child,
    parse_error_report,
    pickle_start_data,
    set_own_sentinel_fd,
    wait_fd,
    write_frames,
)
from .bootstrap import get_preparation_data, import_main_for_preload

MAXFDS_TO_SEND = 256
_STATUS = struct.Struct("i")
_PID = struct.Struct("q")
#: Seconds without a request after which the server imports what it deferred (a pool's
#: requests come back to back; a gap this long means its workers are started).
_PRELOAD_WHEN_IDLE = 0.01


class ForkServer:
    """The parent's handle on its fork server (one per process, started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._alive_w: int | None = None
        self._pid: int | None = None
        self._preload_modules: list[str] = ["__main__"]

    def set_forkserver_preload(self, modules_names: Sequence[str]) -> None:
        if not all(isinstance(m, str) for m in modules_names):
            raise TypeError("module_names must be a list of strings")
        self._preload_modules = list(modules_names)

    def _stop(self) -> None:
        with self._lock:
            self._stop_unlocked()

    def _stop_unlocked(self) -> None:
        if self._pid != os.getpid():
            return
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._alive_w is not None:
            util.close_fds(self._alive_w)
            self._alive_w = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def ensure_running(self) -> None:
        """Start the server unless this process already has a live one."""
        with self._lock:
            self._ensure_running_unlocked()

    def _ensure_running_unlocked(self) -> None:
        if self._pid == os.getpid() and self._proc is not None and self._proc.poll() is None:
            return
        if self._pid == os.getpid():
            self._stop_unlocked()
        else:  # inherited from a parent by fork: not ours to use
            self._sock = self._proc = self._alive_w = None
        preload: dict[str, Any] = {"modules": [m for m in self._preload_modules if m != "__main__"]}
        if "__main__" in self._preload_modules:
            data = get_preparation_data("ForkServer", "forkserver")
            preload["main"] = {k: data[k] for k in data if k.startswith("init_main") or k in (
                "sys_path", "sys_argv", "dir", "orig_dir")}
        parent_sock, server_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking, whatever socket.setdefaulttimeout() says: a request waits for its fork
        # (a busy machine may take seconds), and a timeout would read as the server's death.
        parent_sock.setblocking(True)
        server_sock.setblocking(True)
        try:
            alive_r, alive_w = os.pipe()
        except BaseException:  # out of fds: close what was made
            parent_sock.close()
            server_sock.close()
            raise
        try:
            cmd = child_command(
                "from polyproc._spawn.forkserver import main; "
                f"main({server_sock.fileno()}, {alive_r})"
            )
            self._proc = subprocess.Popen(
                cmd, pass_fds=[server_sock.fileno(), alive_r], close_fds=True
            )
        except BaseException:
            parent_sock.close()
            util.close_fds(alive_w)
            raise
        finally:
            server_sock.close()
            util.close_fds(alive_r)
        self._sock = parent_sock
        self._alive_w = alive_w
        self._pid = os.getpid()
        payload = pickle.dumps(preload, pickle.HIGHEST_PROTOCOL)
        parent_sock.sendall(len(payload).to_bytes(8, "big") + payload)
        util.Finalize(self, ForkServer._stop, args=(self,), exitpriority=-50)

    def request(self, fds: list[int]) -> int:
        """Ask the server to fork a child that receives ``fds``; return the child's pid.

        A server found dead (killed, crashed) raises ``ForkServerError``; the next request
        starts a new one (its children live on; see ``Popen``).
        """
        if len(fds) + 1 > MAXFDS_TO_SEND:
            raise ValueError("too many fds")
        with self._lock:
            self._ensure_running_unlocked()
            sock = self._sock
            assert sock is not None
            try:
                sock.sendmsg(
                    [len(fds).to_bytes(4, "big")],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                )
                reply = _recv_exact(sock, _PID.size)
            except (OSError, EOFError) as e:
                # The exchange broke off: whatever happened, the next one is with a new
                # server. (The server may have forked the child before it died: the caller
                # must not pass these fds again.)
                self._stop_unlocked()
                if not isinstance(e, (ConnectionError, EOFError)):
                    raise  # e.g. ENOBUFS: the caller may try again
                raise ForkServerError(
                    "the fork server died; polyproc starts a new one on the next request (if "
                    "servers keep dying, look for what kills them: the OOM killer, a "
                    "watchdog, ulimit -u)") from e
        pid = _PID.unpack(reply)[0]
        if pid < 0:
            raise OSError(-pid, "fork server could not fork: " + os.strerror(-pid))
        return pid


class ForkServerError(RuntimeError):
    """The fork server died while polyproc asked it for a process."""


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("fork server closed the connection")
        data += chunk
    return data


_forkserver = ForkServer()
os.register_at_fork(after_in_child=lambda: setattr(_forkserver, "_lock", threading.Lock()))
ensure_running = _forkserver.ensure_running
set_forkserver_preload = _forkserver.set_forkserver_preload


class _IndexedFd:
    """An fd passed to a forkserver child, found by its index in the received list."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        from . import bootstrap

        return bootstrap._inherited_fds[self.index]


def _has_reader(pipe_w: int) -> bool:
    """Whether some process still holds the read end of the pipe whose write end we hold."""
    import select

    poller = select.poll()
    poller.register(pipe_w, select.POLLOUT)
    return not any(ev & select.POLLERR for _fd, ev in poller.poll(0))


def _std_fds() -> list[int]:
    """This process's stdout and stderr fds, or /dev/null where one is closed."""
    fds: list[int] = []
    try:
        for fd in (1, 2):
            try:
                os.fstat(fd)
            except OSError:
                fd = os.open(os.devnull, os.O_WRONLY)  # the server closes its copy after fork
            fds.append(fd)
    except BaseException:
        util.close_fds(*(fd for fd in fds if fd > 2))
        raise
    return fds


class Popen(PopenBase):
    """Start ``process_obj`` as a child of the fork server."""

    method = "forkserver"
    DupFd = _IndexedFd

    def __init__(self, process_obj: Any) -> None:
        self.returncode = None
        self.finalizer = None
        self._fds: list[int] = []
        self._launch(process_obj)

    def duplicate_for_child(self, fd: int) -> int:
        self._fds.append(fd)
        return len(self._fds) - 1

    def _launch(self, process_obj: Any) -> None:
        prep_data, obj_data = pickle_start_data(self, process_obj)
        for attempt in range(2):
            fds: list[int] = []
            std_fds: list[int] = []
            try:
                fds += os.pipe()  # data_r, data_w
                fds += os.pipe()  # status_r, status_w
                data_r, data_w, status_r, status_w = fds
                std_fds = _std_fds()
                self.pid = _forkserver.request([data_r, status_w, *std_fds, *self._fds])
                break
            except ForkServerError:
                util.close_fds(*fds)
                if attempt:
                    raise
                # The server died (it may have forked a child with these fds first, which
                # now reads EOF and exits): ask a new server, with new pipes.
            except BaseException:  # out of fds, or no server: close everything made
                util.close_fds(*fds)
                raise
            finally:
                util.close_fds(*(fd for fd in std_fds if fd > 2))
        util.close_fds(data_r, status_w)
        self.sentinel = status_r
        self._data_w = data_w
        self.finalizer = util.Finalize(self, util.close_fds, (status_r, data_w))
        write_frames(data_w, prep_data, obj_data)

    #: The fork server died before the child: ``sentinel`` now watches the child itself.
    orphaned = False
    #: The child ended after its fork server: nobody can tell its exit code (255 stands in).
    exit_unknown = False

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if flag != os.WNOHANG:
            return self.wait()
        if self.returncode is None and wait_fd(self.sentinel, 0):
            if self.orphaned:  # the child itself ended
                self.returncode, self.exit_unknown = 255, True
                return self.returncode
            data = b""
            while len(data) < _STATUS.size:
                chunk = os.read(self.sentinel, _STATUS.size - len(data))
                if not chunk:
                    break
                data += chunk
            if len(data) == _STATUS.size:
                self.returncode = _STATUS.unpack(data)[0]
                self._read_error_report()
            elif not self._adopt_orphan():
                # The fork server died before it could report, and so did the child.
                self.returncode, self.exit_unknown = 255, True
        return self.returncode

    def _read_error_report(self) -> None:
        # The server sends the child's error report (if any) right behind its exit status.
        self._error_read = True
        try:
            if wait_fd(self.sentinel, 0):
                self._error = parse_error_report(os.read(self.sentinel, _REPORT_MAX + 1))
        except OSError:
            pass

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not wait_fd(self.sentinel, left):
                return None
            self.poll()  # the status, or (the server died) a sentinel on the child: wait on
        return self.returncode

    def _adopt_orphan(self) -> bool:
        """The status pipe closed without a status: the fork server died. Its child may live
        on (reparented to init): if so, make ``sentinel`` (same fd number, so whoever waits on
        it keeps working) a pidfd of the child, or else the data pipe's write end, which polls
        as ready once the child, which holds the read end to its end, is gone."""
        try:
            watch = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return False
        except (AttributeError, OSError):  # no pidfd here (Linux < 5.3, other systems)
            watch = None
        # Checked after pidfd_open: a reader alive now was alive then, so the pidfd is the
        # child's own, not that of a process that took its pid since.
        if not _has_reader(self._data_w):
            util.close_fds(watch) if watch is not None else None
            return False
        try:
            os.dup2(self._data_w if watch is None else watch, self.sentinel, inheritable=False)
        finally:
            util.close_fds(watch) if watch is not None else None
        self.orphaned = True
        self._pidfd = watch is not None
        return True

    def _send_signal(self, sig: int) -> None:
        if self.orphaned and self._pidfd and self.returncode is None:
            try:  # by pidfd: the pid may be reused once the (unreaped by us) child ends
                signal.pidfd_send_signal(self.sentinel, sig)
            except ProcessLookupError:
                pass
            return
        super()._send_signal(sig)


# ---------------------------------------------------------------- the server


def main(sock_fd: int, alive_fd: int) -> None:
    """Run the fork server (in a fresh interpreter) until the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the parent
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)  # not the default timeout a sitecustomize may have set
    os.set_inheritable(alive_fd, False)
    size = int.from_bytes(_recv_exact(sock, 8), "big")
    preload = pickle.loads(_recv_exact(sock, size))
    if "main" in preload:
        try:
            import_main_for_preload(preload["main"])
        except Exception:
            pass  # children will import it themselves and report the error
    # Modules that spare each child an import. cloudpickle (for what travels by value:
    # lambdas, closures, functions of a main module that can't be re-imported) waits until
    # the server first idles: importing it (~15 ms) before the first fork would delay the
    # first Process or pool of every program, most of which never need it.
    _preload([*preload["modules"], "polyproc._engine.worker"])
    later = ["cloudpickle"]

    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_r, False)
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    # Each child's status pipe (our write end) and error report pipe (our read end, or -1).
    status_fds: dict[int, tuple[int, int]] = {}
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(alive_fd, selectors.EVENT_READ)
    sel.register(sig_r, selectors.EVENT_READ)
    while True:
        events = sel.select(_PRELOAD_WHEN_IDLE if later else None)
        if not events and later:
            _preload(later)
            later = []
        for key, _ in events:
            if key.fd == alive_fd:
                os._exit(0)  # the parent is gone; children carry on and are reparented
            if key.fd == sig_r:
                try:
                    while os.read(sig_r, 512):
                        pass
                except BlockingIOError:
                    pass
                _reap(status_fds)
                continue
            try:
                msg, ancdata, _flags, _ = sock.recvmsg(4, socket.CMSG_SPACE(4 * MAXFDS_TO_SEND))
            except OSError:
                os._exit(0)
            if not msg:
                os._exit(0)
            fds = array.array("i")
            for level, type_, data in ancdata:
                if level == socket.SOL_SOCKET and type_ == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            fds_list = list(fds)
            # The child must not hold its siblings' status pipes: once this server is gone,
            # a sibling's pipe must close when the sibling ends (its parent's only sign).
            try:
                report_r, report_w = os.pipe()  # the child's error report, sent on at its exit
                os.set_blocking(report_r, False)
            except OSError:
                report_r = report_w = -1  # out of fds: no report, the child still starts
            siblings = [fd for pair in status_fds.values() for fd in pair if fd >= 0]
            pid = _fork_child(fds_list, report_w, [sock.fileno(), alive_fd, sig_r, sig_w,
                                                   report_r, *siblings])
            util.close_fds(fds_list[0], *fds_list[2:], *(fd for fd in [report_w] if fd >= 0))
            if pid > 0:
                status_fds[pid] = (fds_list[1], report_r)
            else:
                util.close_fds(fds_list[1], *(fd for fd in [report_r] if fd >= 0))
            sock.sendall(_PID.pack(pid))


def _preload(names: list[str]) -> None:
    for name in names:
        try:
            __import__(name)
        except ImportError:
            pass
    util._run_finalizers()  # nothing the preload registered must run in children


def _fork_child(fds: list[int], report_w: int, server_fds: list[int]) -> int:
    try:
        pid = os.fork()
    except OSError as e:
        return -(e.errno or errno.EAGAIN)
    if pid != 0:
        return pid
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        util.close_fds(*server_fds, fds[1])
        after_fork_in_child()
        if report_w >= 0:
            set_own_sentinel_fd(report_w)  # where an error report goes (see _popen.send_error)
        from . import bootstrap

        os.dup2(fds[2], 1)
        os.dup2(fds[3], 2)
        util.close_fds(fds[2], fds[3])
        bootstrap._inherited_fds = fds[4:]
        data_fd = fds[0]
        code = bootstrap.run_child(data_fd, parent_sentinel=data_fd)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        util._flush_std_streams()
        exit_forked_child(code)


def _reap(status_fds: dict[int, tuple[int, int]]) -> None:
    while True:
        try:
            pid, sts = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fds = status_fds.pop(pid, None)
        if fds is not None:
            fd, report_r = fds
            report = b""
            if report_r >= 0:
                try:
                    report = os.read(report_r, _REPORT_MAX + 1)
                except OSError:  # nothing reported (EAGAIN)
                    pass
                util.close_fds(report_r)
            try:
                os.write(fd, _STATUS.pack(os.waitstatus_to_exitcode(sts)) + report)
            except OSError:
                pass
            util.close_fds(fd)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("polyproc's fork server is started by polyproc itself")
