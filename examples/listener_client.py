"""A Listener in the parent and a Client in a child process, with an authentication key.

Run: ``python examples/listener_client.py``
"""

import polyproc
from polyproc.connection import Client, Listener

AUTHKEY = b"secret password"


def client(address):
    """Runs in the child: connect, send some objects, print the reply."""
    with Client(address, authkey=AUTHKEY) as conn:
        conn.send("hello")
        conn.send([1, 2.5, None, "three"])
        conn.send_bytes(b"raw bytes")
        conn.send("close")
        print("client got:", conn.recv(), flush=True)


if __name__ == "__main__":
    # Port 0: the OS picks a free port; listener.address tells which.
    with Listener(("127.0.0.1", 0), authkey=AUTHKEY) as listener:
        p = polyproc.Process(target=client, args=(listener.address,))
        p.start()
        with listener.accept() as conn:
            print("connection accepted from", listener.last_accepted)
            print(conn.recv())
            print(conn.recv())
            print(conn.recv_bytes())
            assert conn.recv() == "close"
            conn.send("bye")
        p.join()
    raise SystemExit(p.exitcode)
