"""The wire contract: the typeid, the exposed methods, message kinds and the restricted unpicklers.

Requests are pickled tuples (ident, method, args, kwargs); replies are ("#RETURN", result) or
("#ERROR", exception), exactly as multiprocessing.managers sends them, so a stdlib proxy can talk to us.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import socket
import struct
from multiprocessing import connection
from typing import Any

from kvmgr import errors

TYPEID = "get_store"
OPEN_STORE = "open_store"
OPERATIONS = ("store", "get", "delete", "exists", "keys", "size", "cas", "get_many", "store_many", "quit")
EXPOSED = (*OPERATIONS, "rendezvous")
RETURN = "#RETURN"
ERROR = "#ERROR"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
READ_SIZE = 16 * 1024  # small enough for malloc to serve from its pools
_HEADER = struct.Struct("!i")

_BUILTIN_EXCEPTIONS = {
    name: cls for name, cls in vars(builtins).items() if isinstance(cls, type) and issubclass(cls, BaseException)
}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles built-in data only (str, bytes, numbers, None, tuples, lists, dicts, sets): never a class."""

    def find_class(self, module: str, name: str) -> Any:
        raise errors.ProtocolError(f"refused to unpickle {module}.{name}: only plain built-in data is accepted")


class _ReplyUnpickler(pickle.Unpickler):
    """Unpickles a server's reply: plain data plus kvmgr and built-in exceptions."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "kvmgr.errors" and name in errors.ERROR_CLASSES:
            return errors.ERROR_CLASSES[name]
        if module == "builtins" and name in _BUILTIN_EXCEPTIONS:
            return _BUILTIN_EXCEPTIONS[name]
        raise errors.ProtocolError(f"refused to unpickle {module}.{name} in a reply")


def load_request(data: bytes) -> tuple[str, str, tuple, dict]:
    """Decode a request a peer sent; raise ProtocolError unless it is (ident, method, args, kwargs) of plain data."""
    try:
        request = _PlainUnpickler(io.BytesIO(data)).load()
    except errors.ProtocolError:
        raise
    except Exception as exc:
        raise errors.ProtocolError(f"unreadable request: {exc}") from None
    if not (isinstance(request, tuple) and len(request) == 4):
        raise errors.ProtocolError("a request must be a tuple (ident, method, args, kwargs)")
    ident, method, args, kwargs = request
    if not isinstance(method, str) or not isinstance(args, tuple | list) or not isinstance(kwargs, dict | None):
        raise errors.ProtocolError("a request must be a tuple (ident, method, args, kwargs)")
    return ident, method, tuple(args), kwargs or {}


def load_reply(data: bytes) -> tuple[str, Any]:
    """Decode a server's reply."""
    try:
        kind, result = _ReplyUnpickler(io.BytesIO(data)).load()
    except errors.ProtocolError:
        raise
    except Exception as exc:
        raise errors.ProtocolError(f"unreadable reply: {exc}") from None
    return kind, result


def dump(message: object) -> bytes:
    """Encode a request or reply."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def set_socket_timeout(conn: connection.Connection, seconds: float) -> None:
    """Bound every blocking read and write on conn by `seconds` (0 = no bound), at the kernel level."""
    seconds_part = int(seconds)
    timeval = struct.pack("ll", seconds_part, int((seconds - seconds_part) * 1e6))
    sock = socket.socket(fileno=conn.fileno())
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    finally:
        sock.detach()


class FramedSocket:
    """Length-prefixed messages on a socket's descriptor, in the multiprocessing.connection format.

    Reads as much as the kernel has (one read usually brings a whole message, or several when a client
    pipelines) and writes header and payload with one call, where Connection makes two reads per message.
    """

    __slots__ = ("buffer", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def send(self, payload: bytes) -> None:
        """Write one message."""
        self.send_raw(_HEADER.pack(len(payload)) + payload)

    def send_raw(self, data: bytes) -> None:
        """Write bytes that are already framed (one or more messages)."""
        written = os.write(self.fd, data)
        if written == len(data):
            return
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(self.fd, view):]

    def has_message(self) -> bool:
        """True if a whole message is already buffered (recv will not block)."""
        buffer = self.buffer
        return len(buffer) >= 4 and len(buffer) >= 4 + _HEADER.unpack_from(buffer)[0]

    def recv(self) -> bytes:
        """Read one message; EOFError when the peer closed, BlockingIOError on a socket timeout."""
        buffer = self.buffer
        if not buffer:  # the usual case: one read brings exactly one whole message
            chunk = os.read(self.fd, READ_SIZE)
            if not chunk:
                raise EOFError("connection closed")
            if len(chunk) >= 4 and len(chunk) == 4 + _HEADER.unpack_from(chunk)[0]:
                return chunk[4:]
            buffer += chunk
        while True:
            if len(buffer) >= 4:
                size = _HEADER.unpack_from(buffer)[0]
                if size < 0 or size > MAX_MESSAGE_BYTES:
                    raise errors.ProtocolError(f"bad message length {size}")
                end = 4 + size
                if len(buffer) >= end:
                    message = bytes(buffer[4:end])
                    del buffer[:end]
                    return message
                wanted = end - len(buffer)
            else:
                wanted = 4
            chunk = os.read(self.fd, max(wanted, READ_SIZE))
            if not chunk:
                raise EOFError("connection closed")
            buffer += chunk


def frame(payload: bytes) -> bytes:
    """A message with its length header, ready for FramedSocket.send_raw."""
    return _HEADER.pack(len(payload)) + payload
