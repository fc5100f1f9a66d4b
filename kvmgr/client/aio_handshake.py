"""The client's half of multiprocessing.connection's HMAC handshake, on asyncio streams.

A client answers the server's challenge, then delivers its own and checks the answer, exactly as the stdlib's
`answer_challenge` then `deliver_challenge` do; the digests are kvmgr/protocol/handshake.py's, which the server
uses too. The caller bounds the whole exchange with its timeout.
"""

from __future__ import annotations

import asyncio
from multiprocessing import AuthenticationError

from kvmgr.protocol import wire
from kvmgr.protocol.handshake import CHALLENGE, FAILURE, MAX_MESSAGE, WELCOME, accepts, new_challenge, response_to


async def authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authkey: bytes) -> None:
    """Prove we know authkey and check that the server does; AuthenticationError if either side refuses.

    EOFError (asyncio.IncompleteReadError) or OSError if the connection breaks meanwhile.
    """
    response = response_to(authkey, await _receive(reader))
    if response is None:
        raise AuthenticationError("the server sent no challenge that can be answered")
    writer.write(wire.frame(response))
    if await _receive(reader) != WELCOME:
        raise AuthenticationError("the server rejected our digest")
    ours = new_challenge()
    writer.write(wire.frame(CHALLENGE + ours))
    if accepts(authkey, ours, await _receive(reader)):
        writer.write(wire.frame(WELCOME))
        return
    writer.write(wire.frame(FAILURE))
    raise AuthenticationError("the server's digest was wrong: it does not know the authkey")


async def _receive(reader: asyncio.StreamReader) -> bytes:
    """One handshake message (at most MAX_MESSAGE bytes)."""
    size = wire.HEADER.unpack(await reader.readexactly(wire.HEADER.size))[0]
    if not 0 <= size <= MAX_MESSAGE:
        raise AuthenticationError(f"handshake message of {size} bytes (at most {MAX_MESSAGE} are accepted)")
    return await reader.readexactly(size)
