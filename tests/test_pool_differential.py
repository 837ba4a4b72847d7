"""Differential tests: a program using Pool / ProcessPoolExecutor prints the same with the stdlib
(``multiprocessing``, ``concurrent.futures``) and with polyproc, under every start method.

Each program runs in a fresh interpreter (``run_script``); the two libraries' runs go in
parallel. Outputs are compared line by line.
"""

from __future__ import annotations

import concurrent.futures

import pytest

from _scripts import run_script

METHODS = ["fork", "spawn", "forkserver"]

LIBS = {
    "stdlib": {"lib": "multiprocessing", "futures": "concurrent.futures"},
    "polyproc": {"lib": "polyproc", "futures": "polyproc.futures"},
}

COMMON = """
import sys, time
import {lib} as mp
import {futures} as cf

def sq(x):
    return x * x

def add(a, b):
    return a + b

def fail_on_3(x):
    if x == 3:
        raise ValueError('bad value %d' % x)
    return x

def raise_key(x):
    raise KeyError(x)

class MyError(Exception):
    pass

def raise_custom(*args):
    raise MyError('custom', *args)

def custom_if_3(a, b):
    if a == 3:
        raise MyError('custom', a, b)
    return a * b

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __repr__(self):
        return f'Point({{self.x}}, {{self.y}})'

def make_point(x, y):
    return Point(x, y)

_STATE = {{}}

def init(value):
    _STATE['v'] = value

def read_state(_=None):
    return _STATE.get('v')

def show(label, fn):
    try:
        print(label, repr(fn()))
    except Exception as e:
        print(label, 'raised', type(e).__name__, e.args,
              'cause' if e.__cause__ is not None else 'no cause')
"""

POOL_PROGRAM = COMMON + """
if __name__ == '__main__':
    ctx = mp.get_context({method!r})
    print('method', ctx.get_start_method())
    with ctx.Pool(2) as pool:
        for cs in (None, 1, 3, 50):
            show(f'map cs={{cs}}', lambda: pool.map(sq, range(10), cs))
            show(f'starmap cs={{cs}}', lambda: pool.starmap(add, [(i, i) for i in range(7)], cs))
            show(f'imap cs={{cs}}', lambda: list(pool.imap(sq, range(10), cs or 1)))
            show(f'imap_unordered cs={{cs}}',
                 lambda: sorted(pool.imap_unordered(sq, range(10), cs or 1)))
            show(f'map_async cs={{cs}}', lambda: pool.map_async(sq, range(5), cs).get(30))
            show(f'starmap_async cs={{cs}}',
                 lambda: pool.starmap_async(add, [(1, 2), (3, 4)], cs).get(30))
            show(f'map error cs={{cs}}', lambda: pool.map(fail_on_3, range(8), cs))
            show(f'starmap error cs={{cs}}',
                 lambda: pool.starmap(custom_if_3, [(1, 2), (3, 4), (5, 6)], cs))
            show(f'imap error cs={{cs}}', lambda: list(pool.imap(fail_on_3, range(6), cs or 1)))
        for name, call in (('map', pool.map), ('starmap', pool.starmap),
                           ('imap', lambda f, it: list(pool.imap(f, it))),
                           ('imap_unordered', lambda f, it: list(pool.imap_unordered(f, it))),
                           ('map_async', lambda f, it: pool.map_async(f, it).get(30)),
                           ('starmap_async', lambda f, it: pool.starmap_async(f, it).get(30))):
            show(f'{{name}} empty', lambda: call(sq, []))
        show('map generator', lambda: pool.map(sq, (i for i in range(4))))
        show('imap generator', lambda: list(pool.imap(sq, (i for i in range(4)))))
        show('apply', lambda: pool.apply(add, (2, 3)))
        show('main-module class both ways', lambda: pool.map(repr, [Point(1, 2), Point(3, 4)]))
        show('main-module class result', lambda: pool.starmap(make_point, [(1, 2), (3, 4)]))
        show('apply kwds', lambda: pool.apply(add, (), {{'a': 1, 'b': 2}}))
        show('apply_async', lambda: pool.apply_async(sq, (9,)).get(30))
        show('apply error', lambda: pool.apply(raise_key, ('k',)))
        show('apply custom error', lambda: pool.apply_async(raise_custom, (7,)).get(30))

        got = []
        r = pool.apply_async(sq, (4,), callback=got.append, error_callback=got.append)
        r.wait(30)
        print('callback', r.get(30), r.ready(), r.successful(), got)
        got = []
        r = pool.apply_async(raise_key, ('x',), callback=got.append, error_callback=got.append)
        r.wait(30)
        print('error_callback', r.ready(), r.successful(), [(type(e).__name__, e.args)
                                                           for e in got])
        got = []
        r = pool.map_async(sq, range(4), callback=got.append)
        print('map_async callback', r.get(30), got)
        got = []
        r = pool.map_async(fail_on_3, range(6), 1, error_callback=got.append)
        r.wait(30)
        print('map_async error_callback', r.successful(), [(type(e).__name__, e.args)
                                                           for e in got])
        got = []
        r = pool.starmap_async(add, [(1, 1)], callback=got.append)
        print('starmap_async callback', r.get(30), got)

        it = pool.imap(fail_on_3, range(6))
        outcomes = []
        for _ in range(6):
            try:
                outcomes.append(it.next(30))
            except ValueError as e:
                outcomes.append(str(e))
        print('imap continues after an error', outcomes)

        r = pool.apply_async(time.sleep, (0.5,))
        try:
            r.successful()
        except ValueError as e:
            print('not ready: successful raised ValueError', str(e).endswith(' not ready'))
        show('get timeout', lambda: r.get(0.01))
        print('ready', r.ready())
        r.wait(30)
        print('ready after wait', r.ready(), r.successful(), r.get(30))
        show('imap chunksize 0', lambda: pool.imap(sq, [1], 0))
        show('imap_unordered chunksize 0', lambda: pool.imap_unordered(sq, [1], 0))
    show('terminated pool', lambda: pool.map(sq, [1]))
    show('terminated pool apply_async', lambda: pool.apply_async(sq, (1,)))

    with ctx.Pool(2, init, ('initialised',)) as pool:
        show('initializer', lambda: pool.map(read_state, range(4), 1))
    p = ctx.Pool(1)
    show('join running', p.join)
    p.close()
    show('closed pool', lambda: p.apply(sq, (1,)))
    show('closed pool imap', lambda: p.imap(sq, [1]))
    p.join()
    print('joined')
    show('Pool(0)', lambda: ctx.Pool(0))
    print('done')
"""

EXECUTOR_PROGRAM = COMMON + """
if __name__ == '__main__':
    ctx = mp.get_context({method!r})
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        fs = [ex.submit(sq, i) for i in range(8)]
        print('submit', [f.result(30) for f in fs])
        print('kwargs', ex.submit(add, a=1, b=2).result(30))
        print('as_completed', sorted(f.result() for f in cf.as_completed(fs, timeout=30)))
        done, not_done = cf.wait(fs, timeout=30)
        print('wait', len(done), len(not_done))
        done, not_done = cf.wait(fs + [ex.submit(raise_key, 1)], timeout=30,
                                 return_when=cf.FIRST_EXCEPTION)
        print('wait first exception', len(not_done))
        for cs in (1, 3, 100):
            print('map', cs, list(ex.map(sq, range(10), chunksize=cs)))
            print('map multi', cs, list(ex.map(add, range(5), range(10, 13), chunksize=cs)))
            show(f'map error {{cs}}', lambda: list(ex.map(fail_on_3, range(6), chunksize=cs)))
        print('map empty', list(ex.map(sq, [])))
        print('map generator', list(ex.map(sq, (i for i in range(3)))))
        e = ex.submit(raise_custom, 5).exception(30)
        print('exception', type(e).__name__, e.args, 'RemoteTraceback' in type(e.__cause__).__name__,
              'raise MyError' in str(e.__cause__))
        show('result raises', lambda: ex.submit(fail_on_3, 3).result(30))
        it = ex.map(fail_on_3, range(6))
        seen = []
        try:
            for v in it:
                seen.append(v)
        except ValueError as e:
            seen.append(('error', str(e)))
        print('map stops at the error', seen)
        show('map timeout', lambda: list(ex.map(time.sleep, [0.01, 0.6], timeout=0.2)))
        show('result timeout', lambda: ex.submit(time.sleep, 0.3).result(0.01))
        show('chunksize 0', lambda: ex.map(sq, [1], chunksize=0))
        got = []
        f = ex.submit(sq, 12)
        f.add_done_callback(lambda fut: got.append(fut.result()))
        f.result(30)
        time.sleep(0.05)
        print('done callback', got, f.done(), f.running(), f.cancelled())
    show('submit after shutdown', lambda: ex.submit(sq, 1))
    show('map after shutdown', lambda: ex.map(sq, [1]))
    with cf.ProcessPoolExecutor(2, mp_context=ctx, initializer=init,
                                initargs=('set',)) as ex:
        print('initializer', list(ex.map(read_state, range(3))))
    ex = cf.ProcessPoolExecutor(1, mp_context=ctx)
    f = ex.submit(sq, 3)
    ex.shutdown(wait=True)
    print('shutdown wait', f.done(), f.result())
    show('max_workers 0', lambda: cf.ProcessPoolExecutor(0))
    print('names', [name for name in ('FIRST_COMPLETED', 'FIRST_EXCEPTION', 'ALL_COMPLETED',
                                      'BrokenExecutor', 'ThreadPoolExecutor', 'CancelledError',
                                      'TimeoutError', 'Future', 'wait', 'as_completed')
                    if hasattr(cf, name)])
    print('done')
"""


def _run_both(tmp_path, template: str, method: str) -> dict[str, list[str]]:  # noqa: ANN001
    def run(name: str) -> list[str]:
        d = tmp_path / name
        d.mkdir()
        proc = run_script(d, template.format(method=method, **LIBS[name]), timeout=90)
        assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout.splitlines()

    with concurrent.futures.ThreadPoolExecutor(2) as runner:
        futures = {name: runner.submit(run, name) for name in LIBS}
        return {name: f.result() for name, f in futures.items()}


def _compare(out: dict[str, list[str]]) -> None:
    std, pp = out["stdlib"], out["polyproc"]
    assert std[-1] == "done", std
    diff = [(i, a, b) for i, (a, b) in enumerate(zip(std, pp, strict=False)) if a != b]
    assert not diff and len(std) == len(pp), "\n".join(
        [f"line {i}:\n  stdlib:   {a}\n  polyproc: {b}" for i, a, b in diff]
        + [f"stdlib {len(std)} lines, polyproc {len(pp)} lines"])


@pytest.mark.parametrize("method", METHODS)
def test_pool_program(tmp_path, method) -> None:  # noqa: ANN001
    out = _run_both(tmp_path, POOL_PROGRAM, method)
    _compare(out)
    assert len(out["stdlib"]) > 60


@pytest.mark.parametrize("method", METHODS)
def test_executor_program(tmp_path, method) -> None:  # noqa: ANN001
    out = _run_both(tmp_path, EXECUTOR_PROGRAM, method)
    _compare(out)
    assert len(out["stdlib"]) > 20
