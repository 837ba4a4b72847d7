"""Start processes and show who their parent is.

Run: ``python examples/process_info.py``
"""

import os

import polyproc


def info(title):
    """Print the module name, this process's pid and its parent's pid."""
    parent = polyproc.parent_process()
    print(title)
    print("  module name:", __name__)
    print("  process id:", os.getpid())
    print("  os.getppid():", os.getppid())
    print("  parent_process():", parent.pid if parent is not None else None, flush=True)


def hello(name):
    """Runs in the child: describe it, then greet."""
    info("function hello")
    print("  hello,", name, flush=True)


if __name__ == "__main__":
    info("main program")
    p = polyproc.Process(target=hello, args=("bob",))
    p.start()
    p.join()
    print("child exit code:", p.exitcode)
    raise SystemExit(p.exitcode)
