"""The stdlib documentation's remote-manager recipe, run by separate interpreters.

A server process registers ``get_queue``/``get_results`` and serves on ``0.0.0.0`` with an
authkey; a producer and a consumer ``connect()`` from elsewhere and exchange work (and a
client with the wrong key is refused while the others keep working).

* Over loopback: always runs.
* Across hosts: three network namespaces (server, producer, consumer) joined by veth pairs
  with TEST-NET-1 addresses (192.0.2.0/24, which never leaves the namespaces).  Needs root
  and iproute2 (``apt-get install -y iproute2``); skipped, with the reason, otherwise.
  The namespaces are always deleted afterwards.
"""

from __future__ import annotations

import os
import secrets
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SRC = str(Path(__file__).resolve().parents[1] / "src")
AUTHKEY = "remote-recipe-key"
TASKS = 200

SERVER = """
import queue, sys
from polyproc.managers import BaseManager

tasks, results = queue.Queue(), queue.Queue()

class QueueManager(BaseManager):
    pass

QueueManager.register("get_queue", callable=lambda: tasks)
QueueManager.register("get_results", callable=lambda: results)

if __name__ == "__main__":
    m = QueueManager(address=("0.0.0.0", 0), authkey=sys.argv[1].encode())
    server = m.get_server()
    print(server.address[1], flush=True)
    server.serve_forever()
"""

CLIENT_COMMON = """
import sys
from polyproc.managers import BaseManager

class QueueManager(BaseManager):
    pass

QueueManager.register("get_queue")
QueueManager.register("get_results")

def connect(host, port, key):
    m = QueueManager(address=(host, int(port)), authkey=key.encode(), connect_timeout=20)
    m.connect()
    return m
"""

PRODUCER = CLIENT_COMMON + """
if __name__ == "__main__":
    host, port, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    m = connect(host, port, key)
    tasks, results = m.get_queue(), m.get_results()
    for i in range(n):
        tasks.put(i)
    got = sorted(results.get(timeout=60) for _ in range(n))
    assert got == [i * i for i in range(n)], got[:10]
    print("PRODUCER OK", sum(got), flush=True)
"""

CONSUMER = CLIENT_COMMON + """
import polyproc
if __name__ == "__main__":
    host, port, key, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    try:
        connect(host, port, "not-" + key)
    except polyproc.AuthenticationError as e:
        print("wrong key refused:", e, flush=True)
    else:
        raise SystemExit("a client with the wrong key was accepted")
    m = connect(host, port, key)
    tasks, results = m.get_queue(), m.get_results()
    for _ in range(n):
        i = tasks.get(timeout=60)
        results.put(i * i)
    print("CONSUMER OK", flush=True)
"""


def _write_scripts(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for name, code in (("server", SERVER), ("producer", PRODUCER), ("consumer", CONSUMER)):
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(code))
        paths[name] = str(path)
    return paths


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _read_port(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline()
            if line.strip():
                return int(line)
        if proc.poll() is not None:
            break
    proc.kill()
    _out, err = proc.communicate(timeout=10)
    raise AssertionError(f"the server did not report its port; stderr:\n{err}")


def _run_recipe(prefix: list[list[str]], hosts: tuple[str, str], scripts: dict[str, str],
                procs: list[subprocess.Popen]) -> int:
    """Start the server (prefix[0]), then producer (prefix[1]) and consumer (prefix[2])
    connecting to the given server hosts; check both finish and the server survives.
    Returns the server's port."""
    py = sys.executable
    server = subprocess.Popen([*prefix[0], py, scripts["server"], AUTHKEY], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(server)
    port = str(_read_port(server))
    producer = subprocess.Popen(
        [*prefix[1], py, scripts["producer"], hosts[0], port, AUTHKEY, str(TASKS)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(producer)
    consumer = subprocess.Popen(
        [*prefix[2], py, scripts["consumer"], hosts[1], port, AUTHKEY, str(TASKS)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(consumer)
    c_out, c_err = consumer.communicate(timeout=90)
    p_out, p_err = producer.communicate(timeout=90)
    assert consumer.returncode == 0, c_err
    assert producer.returncode == 0, p_err
    assert "wrong key refused" in c_out and "CONSUMER OK" in c_out
    assert f"PRODUCER OK {sum(i * i for i in range(TASKS))}" in p_out
    assert server.poll() is None, "the server died"
    return int(port)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def test_remote_recipe_over_loopback(tmp_path):
    scripts = _write_scripts(tmp_path)
    procs: list[subprocess.Popen] = []
    try:
        _run_recipe([[], [], []], ("127.0.0.1", "127.0.0.1"), scripts, procs)
    finally:
        _stop(procs)


# ------------------------------------------------------------------ network namespaces


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


@pytest.fixture
def namespaces():
    """Three namespaces: server (192.0.2.1 and 192.0.2.5), producer (192.0.2.2), consumer
    (192.0.2.6), joined by two veth pairs.  Deleted afterwards whatever happens."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2 for network namespaces (apt-get install -y iproute2)")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = secrets.token_hex(3)
    names = [f"pp-{role}-{tag}" for role in ("srv", "prod", "cons")]
    created: list[str] = []
    try:
        for ns in names:
            res = _ip("netns", "add", ns, check=False)
            if res.returncode != 0:
                pytest.skip(f"'ip netns add' is not permitted here: {res.stderr.strip()}")
            created.append(ns)
        srv, prod, cons = names
        links = [(f"pp{tag}a", f"pp{tag}b", prod, "192.0.2.1/30", "192.0.2.2/30"),
                 (f"pp{tag}c", f"pp{tag}d", cons, "192.0.2.5/30", "192.0.2.6/30")]
        for ns in names:
            _ip("-n", ns, "link", "set", "lo", "up")
        for srv_end, client_end, client_ns, srv_addr, client_addr in links:
            _ip("link", "add", srv_end, "type", "veth", "peer", "name", client_end)
            _ip("link", "set", srv_end, "netns", srv)
            _ip("link", "set", client_end, "netns", client_ns)
            _ip("-n", srv, "addr", "add", srv_addr, "dev", srv_end)
            _ip("-n", client_ns, "addr", "add", client_addr, "dev", client_end)
            _ip("-n", srv, "link", "set", srv_end, "up")
            _ip("-n", client_ns, "link", "set", client_end, "up")
        yield srv, prod, cons
    finally:
        for ns in created:
            _ip("netns", "del", ns, check=False)  # also removes the veth ends inside


def test_remote_recipe_across_namespaces(tmp_path, namespaces):
    srv, prod, cons = namespaces
    scripts = _write_scripts(tmp_path)
    procs: list[subprocess.Popen] = []
    try:
        port = _run_recipe([["ip", "netns", "exec", ns] for ns in (srv, prod, cons)],
                           ("192.0.2.1", "192.0.2.5"), scripts, procs)
        # The producer's namespace really is another host: no loopback path to the server.
        probe = subprocess.run(
            ["ip", "netns", "exec", prod, sys.executable, "-c",
             "import socket, sys; s = socket.socket(); s.settimeout(2)\n"
             "try:\n    s.connect(('127.0.0.1', int(sys.argv[1])))\n"
             "except OSError:\n    print('unreachable')\nelse:\n    print('reachable')",
             str(port)],
            capture_output=True, text=True, timeout=30)
        assert probe.stdout.strip() == "unreachable", probe.stderr
    finally:
        _stop(procs)

