"""Machinery behind :mod:`polyproc.managers`.

* :mod:`.channel` - framed, read-ahead message channels over plain or TLS sockets.
* :mod:`.codec` - request/reply pickling (a reusable pickler per connection).
* :mod:`.server` - the server: accept loop, per-connection threads, shared objects.
* :mod:`.proxy` - tokens, per-process endpoints and connections, proxies, references.
* :mod:`.security` - the bind-address check and TLS helpers.
"""
