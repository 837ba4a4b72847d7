"""Safe-by-default checks and TLS helpers shared by managers and ``connection.Listener``.

* :func:`check_bind_address` refuses to listen on a non-loopback TCP address without an
  authkey (anyone who can reach the port could connect; a manager would unpickle what they
  send, which runs code).  Unix sockets and loopback addresses are local and always allowed.
* :func:`split_ssl_context` turns the ``ssl_context=`` argument of a manager into the context
  used on the server side and the one used on the client side.

See ``docs/security.md`` for the threat model.
"""

from __future__ import annotations

import socket

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    import ssl
    from typing import Any

__all__ = [
    "check_bind_address",
    "is_loopback_address",
    "split_ssl_context",
    "client_ssl_wrap",
    "server_ssl_wrap",
]

#: Hosts that mean "every interface" when binding.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "0:0:0:0:0:0:0:0", "*"})


def _host_is_loopback(host: str) -> bool:
    import ipaddress  # here, not at module level: connection imports this module

    if host in _WILDCARD_HOSTS:
        return False
    if host.lower() in ("localhost", "localhost.", "ip6-localhost", "ip6-loopback"):
        return True
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(literal.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    # A host name: loopback only if every address it resolves to is.
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    try:
        return bool(addresses) and all(
            ipaddress.ip_address(str(a).split("%", 1)[0]).is_loopback for a in addresses
        )
    except ValueError:
        return False


def is_loopback_address(address: Any) -> bool:
    """True if ``address`` can only be reached from this machine.

    Unix-domain addresses (``str`` paths, abstract ``bytes`` names) and TCP addresses whose
    host is a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``) qualify; wildcard
    hosts (``''``, ``'0.0.0.0'``, ``'::'``) and every other host do not.
    """
    if address is None or isinstance(address, (str, bytes, bytearray)):
        return True
    if isinstance(address, tuple) and address:
        host = address[0]
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        return isinstance(host, str) and _host_is_loopback(host)
    return False


def check_bind_address(
    address: Any,
    authkey: bytes | None,
    *,
    allow_unauthenticated: bool = False,
    what: str = "Listener",
) -> None:
    """Refuse to listen on a non-loopback address without an authkey.

    Raises ``ValueError`` explaining the two ways out: pass an authkey (every client must
    prove it knows the key before anything it sends is looked at), or pass
    ``allow_unauthenticated=True`` to accept connections from anyone who can reach the
    address.  Call it before binding; ``what`` names the object in the message.
    """
    if authkey or allow_unauthenticated or is_loopback_address(address):
        return
    raise ValueError(
        f"refusing to start a {what} on the non-loopback address {address!r} without an "
        "authkey: anyone who can reach that address could connect, and objects received "
        "over the connection are unpickled, which can run arbitrary code. Pass "
        "authkey=<secret bytes> (for example os.urandom(32), shared with the clients), or "
        "pass allow_unauthenticated=True if every host that can reach the address is "
        "trusted. See docs/security.md."
    )


# -------------------------------------------------------------------- TLS


def _is_ssl_context(obj: object) -> bool:
    import ssl

    return isinstance(obj, ssl.SSLContext)


def split_ssl_context(ssl_context: Any) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """Return ``(server_context, client_context)`` for a manager's ``ssl_context=``.

    Accepted forms: ``None`` (no TLS); an ``ssl.SSLContext``, used for the server side
    unless it is a ``PROTOCOL_TLS_CLIENT`` context and for the client side unless it is a
    ``PROTOCOL_TLS_SERVER`` context; a ``(server_context, client_context)`` pair (either may
    be None); or a zero-argument callable returning one of these (picklable factories let a
    manager started with spawn or forkserver build its contexts in the server process).
    """
    if ssl_context is None:
        return None, None
    if callable(ssl_context) and not _is_ssl_context(ssl_context):
        ssl_context = ssl_context()
        if callable(ssl_context) and not _is_ssl_context(ssl_context):
            raise TypeError("an ssl_context factory must not return another callable")
        return split_ssl_context(ssl_context)
    if isinstance(ssl_context, tuple):
        if len(ssl_context) != 2:
            raise ValueError("ssl_context pair must be (server_context, client_context)")
        server, client = ssl_context
        for ctx in (server, client):
            if ctx is not None and not _is_ssl_context(ctx):
                raise TypeError(f"expected an ssl.SSLContext or None, got {type(ctx).__name__}")
        return server, client
    if not _is_ssl_context(ssl_context):
        raise TypeError(
            "ssl_context must be an ssl.SSLContext, a (server, client) pair of them, or a "
            f"zero-argument callable returning one; got {type(ssl_context).__name__}"
        )
    import ssl

    protocol = ssl_context.protocol
    server = None if protocol == ssl.PROTOCOL_TLS_CLIENT else ssl_context
    client = None if protocol == ssl.PROTOCOL_TLS_SERVER else ssl_context
    return server, client


def server_ssl_wrap(context: ssl.SSLContext, sock: socket.socket) -> socket.socket:
    """Run the server side of the TLS handshake on an accepted socket (honours its timeout)."""
    return context.wrap_socket(sock, server_side=True)


def client_ssl_wrap(context: ssl.SSLContext, sock: socket.socket, address: Any) -> socket.socket:
    """Run the client side of the TLS handshake on a connected socket.

    The server name checked against the certificate is the host of a TCP ``address``.
    """
    hostname = None
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        hostname = address[0] or None
    if context.check_hostname and hostname is None:
        raise ValueError(
            f"TLS hostname checking is on but the address {address!r} has no host name; "
            "use a TCP address or a context with check_hostname=False"
        )
    return context.wrap_socket(sock, server_hostname=hostname)
