"""Talk to a child process through a Pipe.

Run: ``python examples/pipe.py``
"""

import polyproc


def child(conn):
    """Runs in the child: send a list, then echo back what the parent sends."""
    conn.send([42, None, "hello"])
    conn.send(("echo", conn.recv()))
    conn.close()


if __name__ == "__main__":
    parent_conn, child_conn = polyproc.Pipe()
    p = polyproc.Process(target=child, args=(child_conn,))
    p.start()
    child_conn.close()
    print(parent_conn.recv())  # [42, None, 'hello']
    parent_conn.send({"answer": 42})
    print(parent_conn.recv())  # ('echo', {'answer': 42})
    p.join()
    raise SystemExit(p.exitcode)
