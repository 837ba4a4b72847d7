"""HMAC challenge/response handshake, wire-compatible with the stdlib.

One side *delivers* a challenge (``#CHALLENGE#`` + nonce), the other
*answers* with an HMAC of the nonce keyed by the shared authkey, and the
challenger replies ``#WELCOME#`` or ``#FAILURE#``.  ``Listener`` delivers then
answers; ``Client`` answers then delivers, so both sides prove the key.

Two dialects exist:

* legacy (CPython <= 3.11): a raw 20-byte nonce, answered with a raw 16-byte
  HMAC-MD5;
* modern (CPython >= 3.12): ``{digest}`` + 40-byte nonce, answered with
  ``{digest}`` + HMAC computed over the whole prefixed message.

We deliver the dialect of the running interpreter (so its stdlib peer
understands us), answer in whichever dialect the challenge uses, and accept
either form of response.  Every handshake message is read with a small size
cap (:data:`MAX_MESSAGE`) and nothing is unpickled before authentication succeeds.

The steps are generators free of I/O (:func:`server_steps`, :func:`client_steps`), driven
either over a blocking connection (:func:`run_steps`) or by a non-blocking server.
"""

from __future__ import annotations

import hmac
import os
import sys

from .._exceptions import AuthenticationError
from .framing import BadMessageLength

TYPE_CHECKING = False  # avoids importing typing at run time (children start faster)
if TYPE_CHECKING:
    from collections.abc import Generator
    from typing import Protocol

    Steps = Generator[bytes | None, bytes | None, None]

    class _MessageConnection(Protocol):
        def send_bytes(self, buf: bytes) -> None: ...

        def recv_bytes(self, maxlength: int | None = None) -> bytes: ...


__all__ = ["MAX_MESSAGE", "HandshakeTimeout", "answer_challenge", "deliver_challenge",
           "deliver_steps", "answer_steps", "server_steps", "client_steps", "run_steps"]

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"

#: Largest handshake message we are willing to receive.
MAX_MESSAGE = 256

_LEGACY_NONCE_LEN = 20
_MD5_DIGEST_LEN = 16
_LEGACY_LENGTHS = (_LEGACY_NONCE_LEN, _MD5_DIGEST_LEN)
_MODERN_NONCE_LEN = 40
_ALLOWED_DIGESTS = frozenset({b"md5", b"sha256", b"sha384", b"sha3_256", b"sha3_384"})
_MAX_DIGEST_NAME_LEN = max(map(len, _ALLOWED_DIGESTS))

#: Digest named in the challenges we deliver; ``None`` means the legacy dialect.
DEFAULT_DIGEST: str | None = "sha256" if sys.version_info >= (3, 12) else None


class HandshakeTimeout(AuthenticationError, TimeoutError):
    """The peer did not finish the authentication handshake before the deadline.

    Both an :class:`~polyproc.AuthenticationError` (code that skips peers failing to
    authenticate skips it too) and a ``TimeoutError``.
    """


def deliver_challenge(
    connection: _MessageConnection, authkey: bytes, digest_name: str | None = DEFAULT_DIGEST
) -> None:
    """Challenge the peer to prove it knows *authkey*.

    Raises :class:`~polyproc.AuthenticationError` (after telling the peer) if
    the response is wrong.  *digest_name* selects the modern dialect's hash;
    ``None`` sends a legacy challenge.
    """
    run_steps(deliver_steps(authkey, digest_name), connection)


def answer_challenge(connection: _MessageConnection, authkey: bytes) -> None:
    """Answer the peer's challenge, proving that we know *authkey*.

    Raises :class:`~polyproc.AuthenticationError` if the message is not a
    challenge or the peer rejects our response.
    """
    run_steps(answer_steps(authkey), connection)


# The handshake as generators, free of I/O, so that a blocking connection (run_steps) and a
# non-blocking server handling many peers in one thread (polyproc._managers.gate) share it.
# A generator yields a message to send, or None to receive one, which is sent back into it.


def deliver_steps(authkey: bytes, digest_name: str | None = DEFAULT_DIGEST) -> Steps:
    """The challenger's side: challenge, check the response, welcome (or refuse)."""
    _check_authkey(authkey)
    if digest_name:
        name = digest_name.encode("ascii")
        if name not in _ALLOWED_DIGESTS:
            raise ValueError(f"unsupported digest {digest_name!r}")
        message = b"{%s}%s" % (name, os.urandom(_MODERN_NONCE_LEN))
    else:
        message = os.urandom(_LEGACY_NONCE_LEN)
    yield CHALLENGE + message
    response = yield None
    assert response is not None  # run_steps answers a ``yield None`` with what it received
    try:
        _verify_response(authkey, message, response)
    except AuthenticationError:
        yield FAILURE  # sent on a best-effort basis: the peer may be gone
        raise
    yield WELCOME


def answer_steps(authkey: bytes) -> Steps:
    """The answering side: receive a challenge, answer it, expect a welcome."""
    _check_authkey(authkey)
    message = yield None
    assert message is not None  # run_steps answers a ``yield None`` with what it received
    if not message.startswith(CHALLENGE):
        raise AuthenticationError("protocol error: expected a challenge")
    message = message[len(CHALLENGE) :]
    if len(message) < _LEGACY_NONCE_LEN:
        raise AuthenticationError(f"challenge too short: {len(message)} bytes")
    digest_name = _split_digest(message)[0]
    yield _make_response(authkey, message, digest_name)
    if (yield None) != WELCOME:
        raise AuthenticationError("digest sent was rejected")


def server_steps(authkey: bytes) -> Steps:
    """A listener's whole handshake: challenge the peer, then answer its challenge."""
    yield from deliver_steps(authkey)
    yield from answer_steps(authkey)


def client_steps(authkey: bytes) -> Steps:
    """A client's whole handshake: answer the listener's challenge, then challenge it."""
    yield from answer_steps(authkey)
    yield from deliver_steps(authkey)


def run_steps(steps: Steps, connection: _MessageConnection) -> None:
    """Drive handshake *steps* over a blocking *connection*."""
    received = None
    while True:
        try:
            out = steps.send(received)
        except StopIteration:
            return
        received = None
        if out is None:
            received = _recv_handshake(connection)
        elif out is FAILURE:
            try:
                connection.send_bytes(out)
            except OSError:
                pass  # the peer is gone; the authentication failure is what matters
        else:
            connection.send_bytes(out)


def _check_authkey(authkey: object) -> None:
    if not isinstance(authkey, bytes):
        raise ValueError(f"Authkey must be bytes, not {type(authkey)!s}")


def _recv_handshake(connection: _MessageConnection) -> bytes:
    try:
        return connection.recv_bytes(MAX_MESSAGE)
    except BadMessageLength:
        raise AuthenticationError("handshake message too long") from None


def _split_digest(message: bytes) -> tuple[str, bytes]:
    """Return ``(digest_name, payload)``; an empty name means legacy HMAC-MD5."""
    if len(message) in _LEGACY_LENGTHS:
        return "", message
    if message[:1] == b"{":
        end = message.find(b"}", 1, _MAX_DIGEST_NAME_LEN + 2)
        if end > 0 and message[1:end] in _ALLOWED_DIGESTS:
            return message[1:end].decode("ascii"), message[end + 1 :]
    raise AuthenticationError(
        f"unsupported message: {len(message)} bytes without a known {{digest}} prefix"
    )


def _make_response(authkey: bytes, message: bytes, digest_name: str) -> bytes:
    if not digest_name:
        try:
            return hmac.new(authkey, message, "md5").digest()
        except ValueError:
            # MD5 is unavailable (FIPS mode): offer the modern form instead.
            digest_name = "sha256"
    mac = hmac.new(authkey, message, digest_name).digest()
    return b"{%s}%s" % (digest_name.encode("ascii"), mac)


def _verify_response(authkey: bytes, message: bytes, response: bytes) -> None:
    digest_name, mac = _split_digest(response)
    digest_name = digest_name or "md5"
    try:
        expected = hmac.new(authkey, message, digest_name).digest()
    except ValueError:
        raise AuthenticationError(f"digest {digest_name!r} is unsupported") from None
    if not hmac.compare_digest(expected, mac):
        raise AuthenticationError("digest received was wrong")
