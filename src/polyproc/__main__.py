"""Command line entry point: ``python -m polyproc {demo,info,run,bench,doctor}`` (also installed
as ``polyproc``)."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyproc",
        description="polyproc: process-based parallelism with the multiprocessing API.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "demo",
        help="run the classic multiprocessing examples against polyproc",
        description="Run the classic multiprocessing examples (Pool, ProcessPoolExecutor, "
        "Process, Queue, contexts, Pipe) against polyproc.",
    )
    sub.add_parser(
        "info",
        help="show versions, start methods, CPU count and optional extras",
        description="Show the polyproc and Python versions, the start methods, the CPU count "
        "and which optional extras are installed.",
    )
    run = sub.add_parser(
        "run",
        help="run a program with multiprocessing (and concurrent.futures' process pool) "
             "resolving to polyproc",
        description="Run a Python program in whole-program mode: `multiprocessing`, its "
        "submodules and concurrent.futures.ProcessPoolExecutor resolve to polyproc in this "
        "process and in every process it starts, so the libraries the program uses run on "
        "polyproc too. Like `python script.py args` or `python -m module args`.",
    )
    run.add_argument("-m", dest="module", metavar="MODULE",
                     help="run library module MODULE as a script (like python -m)")
    run.add_argument("--no-futures", action="store_true",
                     help="leave concurrent.futures.ProcessPoolExecutor the stdlib's")
    run.add_argument("argv", nargs=argparse.REMAINDER,
                     help="the script (unless -m) and its arguments")
    from ._cli import bench, doctor

    bench.add_arguments(sub.add_parser(
        "bench",
        help="run the benchmarks in benchmarks/ (polyproc against the stdlib and installed peers)",
        description="Run the benchmark scripts of the source repository's benchmarks/ folder "
        "(polyproc against the stdlib and whichever peers are installed) and print one "
        "combined Markdown report; optionally chart the polyproc-vs-stdlib ratios.",
    ))
    doctor.add_arguments(sub.add_parser(
        "doctor",
        help="check /dev/shm, semaphores, leaked resources, fd limits and start methods",
        description="Check that this machine can run polyproc: /dev/shm, named semaphores, "
        "leaked polyproc entries in /dev/shm, the open-file limit, and that each start method "
        "starts a child. Says how to fix each problem. Exit code 0 when healthy, 1 otherwise.",
    ))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``polyproc`` command line with *argv* (default ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._cli import demo

        return demo.run()
    if args.command == "info":
        from ._cli import info

        return info.run()
    if args.command == "run":
        return _run(parser, args)
    if args.command == "bench":
        from ._cli import bench

        return bench.run(args)
    if args.command == "doctor":
        from ._cli import doctor

        return doctor.run(args)
    parser.print_help()
    return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import runpy

    from ._install import install

    if args.module is None and not args.argv:
        parser.error("run needs a script or -m MODULE")
    install(futures=not args.no_futures)
    if args.module is not None:
        sys.argv = [args.module, *args.argv]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    else:
        script = args.argv[0]
        sys.argv = list(args.argv)
        import os

        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
