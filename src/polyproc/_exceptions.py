"""polyproc's exception classes, the stdlib's ``multiprocessing.context`` ones (a leaf: every
layer may import it; ``polyproc.context`` and ``polyproc`` export them)."""

from __future__ import annotations

__all__ = ["ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError"]


class ProcessError(Exception):
    """Base class of polyproc's errors."""


class BufferTooShort(ProcessError):
    """``recv_bytes_into`` got a buffer too small for the message (``args[0]`` holds it)."""


class TimeoutError(ProcessError):  # noqa: A001 - the stdlib's name
    """A result was not ready in time."""


class AuthenticationError(ProcessError):
    """A connection's authentication handshake failed."""


# Their public home, as the stdlib's are multiprocessing.context's (tracebacks, pickles).
for _cls in (ProcessError, BufferTooShort, TimeoutError, AuthenticationError):
    _cls.__module__ = "polyproc.context"
del _cls
