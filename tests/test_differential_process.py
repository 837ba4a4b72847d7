"""Differential tests: the same program under the stdlib and under polyproc prints the same."""

from __future__ import annotations

import pytest

from _scripts import run_script

METHODS = ["fork", "spawn", "forkserver"]

PROGRAM = """
import os, sys, time, signal
import {lib} as mp

def work(conn, x, y=0):
    conn.send((x * 2 + y, mp.current_process().name, mp.parent_process().name,
               mp.current_process().daemon))
    conn.close()

def code(c):
    sys.exit(c)

def boom():
    raise KeyError('k')

def forever():
    while True:
        time.sleep(0.05)

class Sub(mp.get_context({method!r}).Process):
    def __init__(self, conn):
        super().__init__(name='sub')
        self.conn = conn
    def run(self):
        self.conn.send('sub ran ' + self.name)

def describe(p):
    return type(p).__name__, p.exitcode, p.is_alive(), p.daemon

if __name__ == '__main__':
    ctx = mp.get_context({method!r})
    print('method', ctx.get_start_method(), mp.get_start_method(allow_none=True))
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=work, args=(w, 5), kwargs={{'y': 1}}, name='w1', daemon=True)
    print('before', describe(p), p.pid is None)
    p.start(); print('got', r.recv()); p.join(); print('after', describe(p))
    for c in (0, 3, None, 'msg'):
        p = ctx.Process(target=code, args=(c,)); p.start(); p.join(); print('exit', c, p.exitcode)
    p = ctx.Process(target=boom); p.start(); p.join(); print('exception exit', p.exitcode)
    p = ctx.Process(target=forever); p.start(); p.join(0.1); print('alive', p.is_alive())
    p.terminate(); p.join(); print('terminated', p.exitcode)
    p = ctx.Process(target=forever); p.start(); p.kill(); p.join(); print('killed', p.exitcode)
    s = Sub(w); s.start(); print(r.recv()); s.join(); print('sub', s.exitcode)
    for action in ('join', 'start twice', 'close running', 'closed'):
        q = ctx.Process(target=forever)
        try:
            if action == 'join':
                q.join()
            elif action == 'start twice':
                q.start(); q.start()
            elif action == 'close running':
                q.start(); q.close()
            else:
                q.start(); q.kill(); q.join(); q.close(); q.is_alive()
        except Exception as e:
            print(action, type(e).__name__, e)
        finally:
            if q._popen is not None and not q._closed:
                q.kill(); q.join()
    print('children', len(mp.active_children()), 'cpus', mp.cpu_count() > 0)
    print('parent', mp.parent_process(), mp.current_process().name)
"""


def _run(tmp_path, lib, method):
    res = run_script(tmp_path, PROGRAM.format(lib=lib, method=method), name=f"{lib}_{method}.py")
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("method", METHODS)
def test_process_program_same_output(tmp_path, method):
    expected = _run(tmp_path, "multiprocessing", method)
    got = _run(tmp_path, "polyproc", method)
    assert got == expected


CONTEXT_PROGRAM = """
import {lib} as mp
out = [mp.get_start_method(allow_none=True)]
for m in ('fork', 'spawn', 'forkserver'):
    ctx = mp.get_context(m)
    out.append((m, ctx.get_start_method(), ctx.Process.__name__))
try:
    mp.get_context('bogus')
except ValueError as e:
    out.append(str(e))
mp.set_start_method('spawn')
out.append(mp.get_start_method())
try:
    mp.set_start_method('fork')
except RuntimeError as e:
    out.append(str(e))
mp.set_start_method('fork', force=True)
out.append(mp.get_start_method())
out.append(sorted(mp.get_all_start_methods()))
print(out)
"""


def test_context_program_same_output(tmp_path):
    outs = []
    for lib in ("multiprocessing", "polyproc"):
        res = run_script(tmp_path, CONTEXT_PROGRAM.format(lib=lib), name=f"ctx_{lib}.py")
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout)
    assert outs[0] == outs[1]
