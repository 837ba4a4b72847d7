"""Pass a message through a Queue with each start method (fork, spawn, forkserver).

Run: ``python examples/queue_start_methods.py``
"""

import polyproc


def put_hello(q, method):
    """Runs in the child: put one message on the queue."""
    q.put(f"hello from a child started with {method!r}")


if __name__ == "__main__":
    for method in polyproc.get_all_start_methods():
        ctx = polyproc.get_context(method)
        q = ctx.Queue()
        p = ctx.Process(target=put_hello, args=(q, method))
        p.start()
        print(q.get(timeout=60))
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"{method} child exited with {p.exitcode}")
