"""Contexts and start methods: selection, defaults, errors, and the factory names."""

from __future__ import annotations

import sys

import pytest

import polyproc
from _scripts import run_script
from polyproc import context

FACTORIES = [
    "Process", "Pipe", "Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event",
    "Barrier", "Queue", "JoinableQueue", "SimpleQueue", "RawValue", "RawArray", "Value", "Array",
    "Pool", "Manager", "cpu_count", "current_process", "parent_process", "active_children",
    "get_context", "get_start_method", "set_start_method", "get_all_start_methods",
    "set_forkserver_preload", "set_executable", "freeze_support", "get_logger", "log_to_stderr",
    "allow_connection_pickling", "reducer", "ProcessError", "BufferTooShort", "TimeoutError",
    "AuthenticationError",
]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_concrete_contexts(method):
    ctx = polyproc.get_context(method)
    assert ctx.get_start_method() == method
    assert ctx.get_context() is ctx
    assert ctx.Process._start_method == method
    for name in FACTORIES:
        assert hasattr(ctx, name), name
    with pytest.raises(ValueError, match="cannot set start method of concrete context"):
        ctx.set_start_method("spawn")


def test_module_level_names():
    for name in FACTORIES:
        assert hasattr(polyproc, name), name
    assert set(polyproc.__all__) >= {n for n in FACTORIES if n != "Pool" or True}


def test_unknown_method():
    with pytest.raises(ValueError, match="cannot find context for 'nope'"):
        polyproc.get_context("nope")


def test_all_start_methods_default_first():
    methods = polyproc.get_all_start_methods()
    assert sorted(methods) == ["fork", "forkserver", "spawn"]
    assert methods[0] == context._default_method()


def test_default_matches_running_stdlib():
    expected = "forkserver" if sys.version_info >= (3, 14) else "fork"
    assert context._default_method() == expected


def test_set_start_method_rules(tmp_path):
    # A fresh interpreter, since the default context is process-global state.
    res = run_script(tmp_path, """
        import polyproc as mp
        print(mp.get_start_method(allow_none=True))
        mp.set_start_method('spawn')
        print(mp.get_start_method())
        try:
            mp.set_start_method('fork')
        except RuntimeError as e:
            print('RuntimeError', e)
        mp.set_start_method('forkserver', force=True)
        print(mp.get_start_method())
        mp.set_start_method(None, force=True)
        print(mp.get_start_method(allow_none=True))
        print(mp.get_start_method())
    """)
    assert res.returncode == 0, res.stderr
    default = context._default_method()
    assert res.stdout.split("\n")[:6] == [
        "None", "spawn", "RuntimeError context has already been set", "forkserver", "None", default,
    ]


def test_default_context_process_follows_set_start_method(tmp_path):
    res = run_script(tmp_path, """
        import polyproc as mp, sys
        def show():
            print(mp.get_start_method(), flush=True)
        if __name__ == '__main__':
            mp.set_start_method('spawn')
            p = mp.Process(target=show); p.start(); p.join()
            print(type(p._popen).__module__)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["spawn", "polyproc._spawn.spawn"]


def test_exceptions_hierarchy():
    assert issubclass(polyproc.BufferTooShort, polyproc.ProcessError)
    assert issubclass(polyproc.TimeoutError, polyproc.ProcessError)
    assert issubclass(polyproc.AuthenticationError, polyproc.ProcessError)
