"""Paired start+join and Pipe round trip: both libraries alternate in ONE process.

Less sensitive to machine noise than separate runs: each stdlib start is next to a polyproc
start. Run: python benchmarks/paired_start_join.py (about 1 minute).
"""

import multiprocessing as smp
import os
import statistics
import time

import polyproc as pmp

if __name__ == '__main__':
    for method in ('fork', 'forkserver', 'spawn'):
        n = 200 if method != 'spawn' else 30
        ctxs = {'stdlib': smp.get_context(method), 'polyproc': pmp.get_context(method)}
        for c in ctxs.values():
            p = c.Process(target=os.getpid); p.start(); p.join()
        res = {k: [] for k in ctxs}
        for i in range(n):
            for k in (('stdlib', 'polyproc') if i % 2 else ('polyproc', 'stdlib')):
                t = time.perf_counter(); p = ctxs[k].Process(target=os.getpid); p.start(); p.join(); res[k].append(time.perf_counter() - t)
        s, q = statistics.median(res['stdlib']), statistics.median(res['polyproc'])
        print(f"{method:10s} start+join median stdlib {s*1e3:.2f} ms  polyproc {q*1e3:.2f} ms  ratio {s/q:.2f}x")
    # Pipe round trip (small object), paired, forked echo child per library
    def echo(conn):
        while True:
            x = conn.recv()
            if x is None: break
            conn.send(x)
    out = {}
    for name, lib in (('stdlib', smp), ('polyproc', pmp)):
        a, b = lib.get_context('fork').Pipe()
        p = lib.get_context('fork').Process(target=echo, args=(b,)); p.start()
        out[name] = (a, p)
    res = {k: [] for k in out}
    obj = (1, 'two', 3.0)
    for rep in range(10):
        for k in (('stdlib', 'polyproc') if rep % 2 else ('polyproc', 'stdlib')):
            a = out[k][0]; t = time.perf_counter()
            for _ in range(2000): a.send(obj); a.recv()
            res[k].append((time.perf_counter() - t) / 2000)
    for k, (a, p) in out.items(): a.send(None); p.join()
    s, q = statistics.median(res['stdlib']), statistics.median(res['polyproc'])
    print(f"Pipe round trip median stdlib {s*1e6:.1f} us  polyproc {q*1e6:.1f} us  ratio {s/q:.2f}x")
