"""multiprocessing.connection's HMAC handshake, one message at a time: the digests both sides compute.

The server (its event loop) delivers a challenge (and answers the peer's response with #WELCOME# or #FAILURE#), then
answers the peer's challenge and reads its verdict, exactly as `deliver_challenge` then `answer_challenge` do, so the
stdlib client of the running Python always works; the asyncio client (kvmgr/client/aio_handshake.py) takes the
other side with the same functions. Python 3.12 and later name the digest in the challenge
(`connection._create_response` / `_verify_challenge`); Python 3.11 uses HMAC-MD5 of 20 random bytes.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from multiprocessing import AuthenticationError, connection
from typing import cast

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"
MAX_MESSAGE = 256  # the longest handshake message either side reads (recv_bytes(256) in the stdlib)

_create_response = cast("Callable[[bytes, bytes], bytes] | None", getattr(connection, "_create_response", None))
_verify_challenge = cast("Callable[[bytes, bytes, bytes], None] | None", getattr(connection, "_verify_challenge", None))


def new_challenge() -> bytes:
    """The random message of a challenge, as this Python's deliver_challenge makes it."""
    if _create_response is None:
        return os.urandom(20)
    return b"{sha256}" + os.urandom(40)


def accepts(authkey: bytes, challenge: bytes, response: bytes) -> bool:
    """True if response proves the peer knows authkey."""
    if _verify_challenge is None:
        return hmac.compare_digest(response, _legacy_digest(authkey, challenge))
    try:
        _verify_challenge(authkey, challenge, response)
    except AuthenticationError:
        return False
    return True


def response_to(authkey: bytes, message: bytes) -> bytes | None:
    """Our answer to the peer's challenge message (#CHALLENGE# and its random part); None if it is no challenge."""
    if not message.startswith(CHALLENGE):
        return None
    challenge = message[len(CHALLENGE):]
    if _create_response is None:
        return _legacy_digest(authkey, challenge)
    try:
        return _create_response(authkey, challenge)
    except (AuthenticationError, ValueError):
        return None


def _legacy_digest(authkey: bytes, challenge: bytes) -> bytes:
    """Python 3.11's answer to a challenge: HMAC-MD5 of its random part."""
    return hmac.new(authkey, challenge, "md5").digest()
