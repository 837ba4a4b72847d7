"""Main-module handling under spawn/forkserver, the main-guard error, and the clean room."""

from __future__ import annotations

import pytest

from _scripts import run_script

METHODS = ["fork", "spawn", "forkserver"]


@pytest.mark.parametrize("method", METHODS)
def test_guarded_main_not_rerun(tmp_path, method):
    res = run_script(tmp_path, f"""
        import polyproc as mp
        print('import of', __name__, flush=True)

        def child():
            print('child ran', flush=True)

        if __name__ == '__main__':
            p = mp.get_context({method!r}).Process(target=child)
            p.start(); p.join()
            print('exit', p.exitcode)
    """)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "import of __main__"
    assert "child ran" in lines and lines[-1] == "exit 0"
    if method == "fork":
        assert "import of __mp_main__" not in lines
    else:  # the child (or the fork server) imported main under its other name, exactly once
        assert lines.count("import of __mp_main__") == 1


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_unguarded_main_gives_clear_error_not_a_fork_bomb(tmp_path, method):
    res = run_script(tmp_path, f"""
        import polyproc as mp

        def child():
            print('child ran', flush=True)

        p = mp.get_context({method!r}).Process(target=child)
        p.start(); p.join(30)
        print('exit', p.exitcode, flush=True)
    """, timeout=60)
    assert res.returncode == 0, res.stderr
    # The parent finishes; the child fails with the stdlib's RuntimeError and explanation.
    assert res.stdout.strip().splitlines()[-1] == "exit 1"
    assert "RuntimeError" in res.stderr
    assert "if __name__ == '__main__':" in res.stderr
    assert "child ran" not in res.stdout


def test_no_stdlib_multiprocessing_anywhere(tmp_path):
    res = run_script(tmp_path, """
        import sys
        import polyproc as mp
        import polyproc.connection, polyproc.reduction, polyproc.util

        def child(q):
            q.send('multiprocessing' in sys.modules)

        def has_mp():
            return any(k.startswith('multiprocessing') for k in sys.modules)

        if __name__ == '__main__':
            out = ['multiprocessing' in sys.modules]
            for m in ('fork', 'spawn', 'forkserver'):
                ctx = mp.get_context(m)
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=child, args=(w,)); p.start()
                out.append(r.recv()); p.join()
            out.append('multiprocessing' in sys.modules)
            # The rest of the API, parent and (spawn/forkserver) workers alike.
            import polyproc.futures
            for m in ('spawn', 'forkserver'):
                ctx = mp.get_context(m)
                q, lock = ctx.Queue(), ctx.Lock()
                with ctx.Pool(1) as pool:
                    out.append(pool.apply(has_mp))
                with polyproc.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:
                    out.append(ex.submit(has_mp).result())
                q.put(1); q.get(timeout=10)
            out.append(any(k.startswith('multiprocessing') or k == 'concurrent.futures.process'
                           for k in sys.modules))
            print(out)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str([False] * 10)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_relative_script_path_and_cwd_change(tmp_path, method):
    (tmp_path / "sub").mkdir()
    res = run_script(tmp_path, f"""
        import os, polyproc as mp

        def child():
            print('cwd', os.path.basename(os.getcwd()), flush=True)

        if __name__ == '__main__':
            os.chdir('sub')
            p = mp.get_context({method!r}).Process(target=child); p.start(); p.join()
            print('exit', p.exitcode)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["cwd", "sub", "exit", "0"]


def test_daemon_children_terminated_at_parent_exit(tmp_path):
    res = run_script(tmp_path, """
        import time, polyproc as mp

        def forever():
            while True:
                time.sleep(0.05)

        if __name__ == '__main__':
            pids = []
            for m in ('fork', 'spawn', 'forkserver'):
                p = mp.get_context(m).Process(target=forever, daemon=True); p.start()
                pids.append(p.pid)
            print(*pids, flush=True)
    """)
    assert res.returncode == 0, res.stderr
    import psutil

    for pid in map(int, res.stdout.split()):
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        proc.wait(timeout=10)  # raises TimeoutExpired if the daemon outlived its parent


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_interactive_main_functions_travel_by_value(tmp_path, method):
    # Functions defined in a `python -c` program can't be re-imported by a child: they must
    # travel by value (cloudpickle), as a user typing into the REPL would expect.
    import subprocess
    import sys

    from _scripts import SRC

    code = (
        "import polyproc as mp\n"
        "def f(w):\n    w.send('by value ok')\n"
        f"ctx = mp.get_context({method!r})\n"
        "r, w = ctx.Pipe(duplex=False)\n"
        "p = ctx.Process(target=f, args=(w,)); p.start(); print(r.recv()); p.join()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "by value ok"
