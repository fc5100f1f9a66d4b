"""The wire contract: the typeid, the exposed methods, message kinds and the restricted unpicklers.

Requests are pickled tuples (ident, method, args, kwargs); replies are ("#RETURN", result) or
("#ERROR", exception), exactly as multiprocessing.managers sends them, so a stdlib proxy can talk to us.

A request is decoded by a fresh unpickler of its own (`pickle.loads`), which may build plain data only: while a thread
decodes one, an audit hook refuses every class the pickle names, before anything is imported. A reply is decoded by
_ReplyUnpickler, which admits the whitelisted exceptions besides.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import socket
import struct
import sys
import threading
from multiprocessing import connection
from typing import Any

from kvmgr import errors
from kvmgr.config import MAX_REQUEST_BYTES, READ_SIZE
from kvmgr.protocol import operations

TYPEID = "get_store"
OPEN_STORE = "open_store"
EXPOSED = operations.NAMES
RETURN = "#RETURN"
ERROR = "#ERROR"
PROTOCOL_VERSION = 1  # open_store(PROTOCOL_VERSION) answers with the server's settings as well as the ident
HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!iQ")  # multiprocessing.connection's form for messages over 2 GiB: -1, then the size
_LONG = 0x7FFFFFFF
_PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
_pack_header = HEADER.pack
_pack_length = struct.Struct("<I").pack  # a pickle opcode's 4-byte length
_unpack_length = struct.Struct("<I").unpack_from
_SHORT_BYTES, _BYTES, _SHORT_STR, _STR = b"C"[0], b"B"[0], b"\x8c"[0], b"X"[0]  # the opcodes of a written-out result
_RETURN_PICKLE = b"\x80\x05\x8c\x07" + RETURN.encode()  # PROTO 5, SHORT_BINUNICODE of 7 bytes: "#RETURN"
_dumps = pickle.dumps
_loads = pickle.loads

UNPICKLING_ERRORS = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, LookupError, OverflowError, RecursionError,
    MemoryError,  # a length field claiming more than memory holds
)
"""What malformed pickle bytes raise; anything else (an exception a signal handler raised meanwhile) passes through."""

REPLY_ERRORS: dict[tuple[str, str], type[Exception]] = {
    **{("kvmgr.errors", name): cls for name, cls in errors.ERROR_CLASSES.items()},
    **{  # Exception subclasses only: a reply can never make a client raise SystemExit or KeyboardInterrupt
        ("builtins", name): cls for name, cls in vars(builtins).items() if isinstance(cls, type) and issubclass(cls, Exception)
    },
}
"""The error whitelist, one for both sides: the exceptions a reply may carry, by (module, name). A client unpickles
these and nothing else (`load_reply`); a server sends a kvmgr error on it as it is, anything else as one line
(`sendable_error`)."""


_decoding = threading.local()  # .plain is True while this thread decodes a request: every class it names is refused
_hooked = False  # _refuse_classes is installed (in this process)
_install_lock = threading.Lock()


def _refuse_classes(event: str, args: tuple[Any, ...]) -> None:
    """The audit hook that keeps a request to plain data: an unpickler raises "pickle.find_class" before it imports
    anything a pickle names (GLOBAL, STACK_GLOBAL, INST, OBJ and EXT all go through find_class), and while this thread
    decodes a request the hook refuses it there, so nothing is imported and no callable can reach the stack."""
    if event == "pickle.find_class" and getattr(_decoding, "plain", False):
        module, name = args
        raise errors.ProtocolError(f"refused to unpickle {module}.{name}: only plain built-in data is accepted")


def _install_refusal() -> None:
    """Install _refuse_classes, once per process (only a process that decodes requests, a server, installs it)."""
    global _hooked
    with _install_lock:
        if not _hooked:
            sys.addaudithook(_refuse_classes)
            _hooked = True


class _ReplyUnpickler(pickle.Unpickler):
    """Unpickles a server's reply: plain data plus kvmgr and built-in exceptions."""

    __slots__ = ()

    def find_class(self, module: str, name: str) -> Any:
        cls = REPLY_ERRORS.get((module, name))
        if cls is None:
            raise errors.ProtocolError(f"refused to unpickle {module}.{name} in a reply")
        return cls


def sendable_error(exc: Exception) -> errors.KvmgrError:
    """The error a reply carries for exc: exc itself when it is a kvmgr error of the whitelist, else a KvmgrError of one line
    naming it (the arguments of any other exception may hold anything)."""
    cls = type(exc)
    if isinstance(exc, errors.KvmgrError) and REPLY_ERRORS.get((cls.__module__, cls.__name__)) is cls:
        return exc
    lines = str(exc).strip().splitlines()
    return errors.KvmgrError(f"the server could not run the call: {cls.__name__}: {lines[0] if lines else ''}".rstrip(": "))


def reply_frame(kind: str, result: object) -> bytes:
    """A framed reply ("#RETURN", result) or ("#ERROR", exception), ready to write; a result that cannot be encoded
    becomes an error reply."""
    try:
        payload = _dumps((kind, result), _PICKLE_PROTOCOL)
    except Exception as exc:
        payload = dump((ERROR, errors.KvmgrError(f"cannot send the result: {exc}")))
    size = len(payload)
    return _pack_header(size) + payload if size <= _LONG else frame(payload)


def return_frame(result: object) -> bytes:
    """The framed reply ("#RETURN", result), as reply_frame makes it: made once for the constant answers (None, True,
    False, "saved", "updated"), which are most writes' replies, and spelled out for a str or bytes (most reads' replies)."""
    kind = type(result)  # by type first: 1 == True must not find True's reply
    if kind is bytes:
        made = _return_data(b"C", b"B", result)  # type: ignore[arg-type]
    elif kind is str:
        made = _CONSTANT_RETURNS.get(result) or _return_data(b"\x8c", b"X", result.encode("utf-8", "surrogatepass"))  # type: ignore[attr-defined]
    elif result is None or kind is bool:
        made = _CONSTANT_RETURNS[result]
    else:
        made = None
    return made or reply_frame(RETURN, result)


def _return_data(short: bytes, long: bytes, data: bytes) -> bytes | None:
    """The framed pickle of ("#RETURN", a str or bytes whose encoding is data), written out: PROTO 5, the kind as a
    SHORT_BINUNICODE, the value by its opcode (`short`: up to 255 bytes; `long`: a 4-byte length), TUPLE2, STOP.
    Any unpickler reads it as pickle.dumps' own (which adds a FRAME and MEMOIZEs), at half the cost. None if over 2 GiB."""
    size = len(data)
    if size < 256:
        return b"%b%b%b%c%b\x86." % (_pack_header(size + 15), _RETURN_PICKLE, short, size, data)
    if size < _LONG - 32:
        return b"%b%b%b%b%b\x86." % (_pack_header(size + 18), _RETURN_PICKLE, long, _pack_length(size), data)
    return None


def load_request(data: bytes) -> tuple[str, str, tuple, dict]:
    """Decode a request a peer sent; raise ProtocolError unless it is (ident, method, args, kwargs) of plain data."""
    if not _hooked:
        _install_refusal()
    _decoding.plain = True  # a fresh unpickler per request (pickle.loads makes one), refusing every class (the hook)
    try:
        request = _loads(data)
    except errors.ProtocolError:
        raise
    except UNPICKLING_ERRORS as exc:
        raise errors.ProtocolError(f"unreadable request: {exc}") from None
    finally:
        _decoding.plain = False
    if not (isinstance(request, tuple) and len(request) == 4):
        raise errors.ProtocolError("a request must be a tuple (ident, method, args, kwargs)")
    ident, method, args, kwargs = request
    if type(method) is str and type(args) is tuple and type(kwargs) is dict:  # the usual request: nothing to convert
        return request
    if not isinstance(method, str) or not isinstance(args, tuple | list) or not isinstance(kwargs, dict | None):
        raise errors.ProtocolError("a request must be a tuple (ident, method, args, kwargs)")
    return ident, method, tuple(args), kwargs or {}


def load_reply(data: bytes) -> tuple[str, Any]:
    """Decode a server's reply. The usual ones, a constant answer or a str or bytes result as return_frame writes them
    out, are read without an unpickler (the same result, a fifth of the cost); any other goes through _ReplyUnpickler."""
    try:
        if type(data) is bytes:
            known = _written_out_result(data) or _CONSTANT_REPLIES.get(data)  # prefix tests first: no hash of a long reply
            if known is not None:
                return known
        kind, result = _ReplyUnpickler(io.BytesIO(data)).load()
    except errors.ProtocolError:
        raise
    except UNPICKLING_ERRORS as exc:
        raise errors.ProtocolError(f"unreadable reply: {exc}") from None
    return kind, result


def _written_out_result(data: bytes) -> tuple[str, str | bytes] | None:
    """("#RETURN", the str or bytes) if data is exactly the pickle _return_data writes, else None.

    Its opcodes are read as an unpickler reads them, so no other pickle matches: PROTO 5 and "#RETURN" (the prefix),
    one SHORT_BINBYTES/SHORT_BINUNICODE (a 1-byte length) or BINBYTES/BINUNICODE (4 bytes) whose length runs
    exactly to the closing TUPLE2 and STOP."""
    if not data.startswith(_RETURN_PICKLE) or not data.endswith(b"\x86."):
        return None
    size, code = len(data), data[11]  # an int (`in` a bytes would try it as an int first, raising and clearing a TypeError)
    if code in (_SHORT_BYTES, _SHORT_STR) and data[12] == size - 15:
        value = data[13:-2]
    elif code in (_BYTES, _STR) and size >= 18 and _unpack_length(data, 12)[0] == size - 18:
        value = data[16:-2]
    else:
        return None
    return RETURN, value if code in (_SHORT_BYTES, _BYTES) else value.decode("utf-8", "surrogatepass")


def dump(message: object) -> bytes:
    """Encode a request or reply."""
    return pickle.dumps(message, _PICKLE_PROTOCOL)


def set_socket_timeout(conn: connection.Connection | int, seconds: float) -> None:
    """Bound every blocking read and write on a connection or descriptor by `seconds` (0 = no bound), in the kernel."""
    sock = socket.socket(fileno=conn if isinstance(conn, int) else conn.fileno())
    try:
        bound_blocking_calls(sock, seconds)
    finally:
        sock.detach()


def bound_blocking_calls(sock: socket.socket, seconds: float) -> None:
    """Make each blocking read and write on sock give up after `seconds` (0 = never), with SO_RCVTIMEO/SO_SNDTIMEO.

    A positive time under a microsecond becomes one microsecond: the kernel reads (0, 0) as "never".
    """
    whole = int(seconds)
    micro = int((seconds - whole) * 1e6)
    if seconds > 0 and whole == micro == 0:
        micro = 1
    timeval = struct.pack("ll", whole, micro)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


class FramedSocket:
    """Length-prefixed messages on a socket's descriptor, in the multiprocessing.connection format.

    Reads as much as the kernel has (one read usually brings a whole message, or several when a client
    pipelines) and writes header and payload with one call, where Connection makes two reads per message.
    A message longer than `max_size` is a ProtocolError.
    """

    __slots__ = ("buffer", "fd", "max_size")

    def __init__(self, fd: int, max_size: int = MAX_REQUEST_BYTES) -> None:
        self.fd = fd
        self.buffer = bytearray()
        self.max_size = max_size

    def send(self, payload: bytes) -> None:
        """Write one message."""
        self.send_raw(frame(payload))

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
        bounds = message_bounds(self.buffer, self.max_size)
        return bounds is not None and len(self.buffer) >= bounds[1]

    def recv(self) -> bytes:
        """Read one message; EOFError when the peer closed, BlockingIOError on a socket timeout."""
        buffer = self.buffer
        if not buffer:  # the usual case: one read brings exactly one whole message
            chunk = os.read(self.fd, READ_SIZE)
            if not chunk:
                raise EOFError("connection closed")
            if len(chunk) >= 4 and len(chunk) == 4 + HEADER.unpack_from(chunk)[0]:
                return chunk[4:]
            buffer += chunk
        while True:
            bounds = message_bounds(buffer, self.max_size)
            if bounds is not None and len(buffer) >= bounds[1]:
                start, end = bounds
                message = bytes(buffer[start:end])
                del buffer[:end]
                return message
            wanted = bounds[1] - len(buffer) if bounds is not None else _LONG_HEADER.size
            chunk = os.read(self.fd, max(wanted, READ_SIZE))
            if not chunk:
                raise EOFError("connection closed")
            buffer += chunk


def message_bounds(buffer: bytes | bytearray, max_size: int, offset: int = 0) -> tuple[int, int] | None:
    """Where the first message in buffer (from offset on) starts and ends, once its header is complete (None before)."""
    if len(buffer) - offset < 4:
        return None
    size = HEADER.unpack_from(buffer, offset)[0]
    start = offset + 4
    if size == -1:
        if len(buffer) - offset < _LONG_HEADER.size:
            return None
        size, start = _LONG_HEADER.unpack_from(buffer, offset)[1], offset + _LONG_HEADER.size
    if size < 0 or size > max_size:
        raise errors.ProtocolError(f"bad message length {size} (at most {max_size} bytes are accepted)")
    return start, start + size


def frame(payload: bytes) -> bytes:
    """A message with its length header, ready for FramedSocket.send_raw."""
    size = len(payload)
    if size > _LONG:
        return _LONG_HEADER.pack(-1, size) + payload
    return _pack_header(size) + payload


_CONSTANT_RETURNS: dict[object, bytes] = {answer: reply_frame(RETURN, answer) for answer in (None, True, False, "saved", "updated")}
_CONSTANT_REPLIES: dict[bytes, tuple[str, Any]] = {made[4:]: (RETURN, answer) for answer, made in _CONSTANT_RETURNS.items()}
