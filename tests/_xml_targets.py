"""Module-level helpers for tests/test_managers_xmlrpc.py (importable by spawned children)."""

from __future__ import annotations

import queue

from polyproc.managers import BaseManager

_queue: queue.Queue = queue.Queue()


def get_queue() -> queue.Queue:
    return _queue


class QueueManager(BaseManager):
    """Serves one queue (created by the server's ``get_queue``)."""


QueueManager.register("get_queue", callable=get_queue)


class QueueClient(BaseManager):
    """The same interface, for clients (no callable)."""


QueueClient.register("get_queue")

VALUES = ["hello world", None, True, 2.25, "hall\xe5 v\xe4rlden",
          "\u043f\u0440\u0438\u0432\u0456\u0442", b"hall\xe5 v\xe4rlden", 2**40, -(2**70),
          "line\rbreak\r\n", {"nested": [1, (2, 3)]}]


def put_values(address: object, authkey: bytes) -> None:
    """Child: connect with serializer='xmlrpclib' and put a tuple of VALUES."""
    manager = QueueClient(address=address, authkey=authkey, serializer="xmlrpclib")
    manager.connect()
    q = manager.get_queue()
    q.put(tuple(VALUES))
    del q


def append_to(shared_list, value) -> None:
    """Child: use a proxy of an xmlrpclib manager that was passed as an argument."""
    shared_list.append(value)
    shared_list.append(shared_list[:])
