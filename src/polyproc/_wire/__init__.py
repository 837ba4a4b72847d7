"""Wire-level building blocks shared by :mod:`polyproc.connection`.

* :mod:`polyproc._wire.framing` reads and writes length-prefixed frames on a
  file descriptor, byte-compatible with the stdlib ``multiprocessing``.
* :mod:`polyproc._wire.auth` implements the HMAC challenge/response handshake
  used by ``Listener``/``Client`` when an ``authkey`` is given.
"""
