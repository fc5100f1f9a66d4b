"""Framing below the process level: FramedSocket, message_bounds, frame and the client's Link over socket.socketpair()."""

from __future__ import annotations

import contextlib
import fcntl
import io
import pickle
import random
import socket
import struct
import termios
import threading
import time
from collections.abc import Iterator
from multiprocessing import connection

import pytest

from kvmgr.client.manager import Link
from kvmgr.errors import ProtocolError
from kvmgr.protocol import wire
from kvmgr.protocol.wire import READ_SIZE, FramedSocket, frame, message_bounds
from tests.commit_failure import Call, until

LIMIT = 1 << 20  # the max_size of the FramedSockets here
WAIT = 5.0  # the most any step of a test waits for the other end (it never takes that long when all is well)
LONG_HEADER = struct.Struct("!iQ")  # multiprocessing.connection's header for messages over 2 GiB: -1, then the size


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of stream sockets, (peer, ours); every blocking call on ours gives up after WAIT seconds."""
    peer, ours = socket.socketpair()
    wire.bound_blocking_calls(ours, WAIT)
    yield peer, ours
    peer.close()
    ours.close()


def unread(sock: socket.socket) -> int:
    """How many bytes wait in the socket's receive queue."""
    count: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    return count


def trickle(peer: socket.socket, ours: socket.socket, data: bytes, reader: Call) -> None:
    """Send data a byte at a time, each only once the reader has taken the one before: every byte is a read of its own."""
    for index in range(len(data)):
        peer.sendall(data[index:index + 1])
        until(lambda: unread(ours) == 0 or not reader.thread.is_alive(), f"the reader taking byte {index}")


def received(reader: Call) -> bytes:
    """What the reader's call returned (its exception, raised, if it failed)."""
    reader.join()
    if reader.error is not None:
        raise reader.error
    assert isinstance(reader.result, bytes)
    return reader.result


def test_frame_is_the_multiprocessing_connection_format_both_ways(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    assert frame(b"abc") == b"\x00\x00\x00\x03abc" and frame(b"") == b"\x00\x00\x00\x00"
    stdlib = connection.Connection(peer.detach())
    framed = FramedSocket(ours.fileno(), LIMIT)
    try:
        stdlib.send_bytes(b"from the stdlib")
        assert framed.recv() == b"from the stdlib"
        framed.send(b"from kvmgr")
        assert stdlib.recv_bytes() == b"from kvmgr"
    finally:
        stdlib.close()


def test_a_header_that_arrives_a_byte_at_a_time(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    framed = FramedSocket(ours.fileno(), LIMIT)
    reader = Call(framed.recv)
    trickle(peer, ours, frame(b"split"), reader)
    assert received(reader) == b"split"
    assert framed.buffer == b""


def test_a_long_header_that_arrives_a_byte_at_a_time(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    framed = FramedSocket(ours.fileno(), LIMIT)
    reader = Call(framed.recv)
    trickle(peer, ours, LONG_HEADER.pack(-1, 4) + b"long", reader)
    assert received(reader) == b"long"


def test_several_messages_in_one_write_come_out_one_by_one(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    framed = FramedSocket(ours.fileno(), LIMIT)
    peer.sendall(frame(b"one") + frame(b"") + frame(b"three") + frame(b"four")[:6])
    assert framed.recv() == b"one"
    assert framed.has_message()
    assert framed.recv() == b""
    assert framed.has_message()
    assert framed.recv() == b"three"
    assert not framed.has_message()  # the fourth is only half here
    peer.sendall(frame(b"four")[6:])
    assert framed.recv() == b"four"
    assert not framed.has_message() and framed.buffer == b""


@pytest.mark.parametrize("size", [READ_SIZE - 4, READ_SIZE - 3, READ_SIZE, 3 * READ_SIZE + 5])
def test_a_message_as_large_as_a_read_or_larger(pair: tuple[socket.socket, socket.socket], size: int) -> None:
    peer, ours = pair
    framed = FramedSocket(ours.fileno(), LIMIT)
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    sender = threading.Thread(target=peer.sendall, args=(frame(payload) + frame(b"next"),), daemon=True)
    sender.start()
    assert framed.recv() == payload
    assert framed.recv() == b"next"
    sender.join(WAIT)


@pytest.mark.parametrize("header", [
    pytest.param(struct.pack("!i", 1001), id="one byte over"),
    pytest.param(struct.pack("!i", -2), id="negative"),
    pytest.param(LONG_HEADER.pack(-1, 1001), id="long header over"),
    pytest.param(LONG_HEADER.pack(-1, 1 << 63), id="long header of 8 EiB"),
])
def test_an_oversize_length_is_refused_naming_the_limit(pair: tuple[socket.socket, socket.socket], header: bytes) -> None:
    peer, ours = pair
    framed = FramedSocket(ours.fileno(), 1000)
    peer.sendall(header + b"x" * 16)
    with pytest.raises(ProtocolError, match=r"bad message length -?\d+ \(at most 1000 bytes are accepted\)"):
        framed.recv()


def test_message_bounds_reads_both_header_forms_once_they_are_complete() -> None:
    assert message_bounds(b"", 10) is None and message_bounds(b"\x00\x00\x00", 10) is None
    assert message_bounds(frame(b"0123456789"), 10) == (4, 14)
    assert message_bounds(frame(b"0123456789")[:6], 10) == (4, 14)  # known before the payload is
    long = LONG_HEADER.pack(-1, 10) + b"0123456789"
    assert message_bounds(long[:4], 10) is None and message_bounds(long[:11], 10) is None
    assert message_bounds(long, 10) == (12, 22)
    with pytest.raises(ProtocolError, match=r"bad message length 11 \(at most 10 bytes"):
        message_bounds(LONG_HEADER.pack(-1, 11), 10)


def test_the_long_header_is_the_one_multiprocessing_connection_reads(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    stdlib = connection.Connection(ours.detach())
    try:
        peer.sendall(LONG_HEADER.pack(-1, 5) + b"hello")
        assert stdlib.recv_bytes() == b"hello"
    finally:
        stdlib.close()


@pytest.mark.parametrize("sent", [
    pytest.param(b"", id="before a header"),
    pytest.param(b"\x00\x00", id="mid-header"),
    pytest.param(LONG_HEADER.pack(-1, 5)[:7], id="mid-long-header"),
    pytest.param(frame(b"0123456789")[:9], id="mid-payload"),
    pytest.param(frame(b"x" * (2 * READ_SIZE))[:READ_SIZE + 100], id="mid-payload after a full read"),
])
def test_a_peer_closing_mid_frame_is_eof(pair: tuple[socket.socket, socket.socket], sent: bytes) -> None:
    peer, ours = pair
    framed = FramedSocket(ours.fileno(), LIMIT)
    peer.sendall(sent)
    peer.close()
    with pytest.raises(EOFError):
        framed.recv()


def test_a_read_bounded_by_the_socket_timeout_gives_up_on_half_a_message(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    wire.bound_blocking_calls(ours, 0.2)
    framed = FramedSocket(ours.fileno(), LIMIT)
    peer.sendall(frame(b"0123456789")[:8])
    started = time.monotonic()
    with pytest.raises(BlockingIOError):
        framed.recv()
    assert time.monotonic() - started < 0.2 + 1.0


def link(sock: socket.socket, timeout: float) -> Link:
    """The client's Link on sock, armed with timeout as the client arms a new connection."""
    wire.bound_blocking_calls(sock, timeout)
    return Link(sock, "ident", LIMIT, timeout)


def test_link_sends_a_request_and_receives_replies_large_and_merged(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    client = link(ours, WAIT)
    server = FramedSocket(peer.fileno(), LIMIT)
    client.send(frame(b"request"), time.monotonic() + WAIT)
    assert server.recv() == b"request"
    large = b"r" * (3 * READ_SIZE + 1)
    sender = threading.Thread(target=server.send_raw, args=(frame(large) + frame(b"second"),), daemon=True)
    sender.start()
    assert client.receive(time.monotonic() + WAIT) == large
    assert client.receive(time.monotonic() + WAIT) == b"second"
    sender.join(WAIT)


@pytest.mark.parametrize("sent", [
    pytest.param(b"\x00\x00", id="half a header"),
    pytest.param(frame(b"0123456789")[:9], id="half a payload"),
])
def test_link_keeps_its_deadline_when_the_server_sends_half_a_reply_and_stops(
    pair: tuple[socket.socket, socket.socket], sent: bytes,
) -> None:
    peer, ours = pair
    client = link(ours, WAIT)  # armed for longer than the deadline: the deadline must still rule
    peer.sendall(sent)
    started = time.monotonic()
    with pytest.raises((TimeoutError, BlockingIOError)):
        client.receive(started + 0.3)
    assert time.monotonic() - started < 0.3 + 1.0


def test_link_keeps_its_deadline_when_the_server_trickles_a_byte_at_a_time(pair: tuple[socket.socket, socket.socket]) -> None:
    peer, ours = pair
    client = link(ours, 0.3)
    stop = threading.Event()

    def drip() -> None:
        for byte in frame(b"x" * 1000):
            if stop.wait(0.02):  # a byte every 20 ms: each read returns well within any timeout, the reply never ends in time
                return
            peer.sendall(bytes([byte]))

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    started = time.monotonic()
    try:
        with pytest.raises((TimeoutError, BlockingIOError)):
            client.receive(started + 0.3)
        assert time.monotonic() - started < 0.3 + 1.0
    finally:
        stop.set()
        dripping.join(WAIT)


SMALL_BUFFER = 64 * 1024  # socket buffers this small keep the kernel from taking a whole large request at once


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of TCP sockets on loopback with small buffers, (peer, ours)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        ours = socket.socket()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        ours.connect(listener.getsockname())
        peer, _ = listener.accept()
    return peer, ours


def unix_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of Unix stream sockets with small buffers, (peer, ours)."""
    peer, ours = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    return peer, ours


@pytest.mark.parametrize("family", [
    pytest.param("tcp"),
    pytest.param("unix"),
])
def test_link_keeps_its_deadline_when_the_server_takes_a_request_slowly(family: str) -> None:
    peer, ours = tcp_pair() if family == "tcp" else unix_pair()
    client = link(ours, 0.2)
    stop = threading.Event()

    def drain() -> None:  # empties the socket every 20 ms: each write makes progress within 0.2 s, the whole takes about 1 s
        peer.setblocking(False)
        while not stop.wait(0.02):
            with contextlib.suppress(BlockingIOError):
                while peer.recv(1 << 20):
                    pass

    draining = threading.Thread(target=drain, daemon=True)
    draining.start()
    started = time.monotonic()
    try:
        with pytest.raises(OSError):  # TimeoutError or BlockingIOError
            client.send(frame(b"x" * (16 << 20)), started + 0.2)
        assert time.monotonic() - started < 0.2 + 1.0
    finally:
        stop.set()
        draining.join(WAIT)
        peer.close()
        ours.close()


@pytest.mark.parametrize("sent", [
    pytest.param(b"", id="before a reply"),
    pytest.param(b"\x00\x00", id="mid-header"),
    pytest.param(frame(b"0123456789")[:9], id="mid-payload"),
])
def test_link_sees_eof_when_the_server_closes_mid_reply(pair: tuple[socket.socket, socket.socket], sent: bytes) -> None:
    peer, ours = pair
    client = link(ours, WAIT)
    peer.sendall(sent)
    peer.close()
    started = time.monotonic()
    with pytest.raises(EOFError):
        client.receive(started + WAIT)
    assert time.monotonic() - started < 1.0  # at once, not at the deadline


@pytest.mark.parametrize("result", [None, True, False, "saved", "updated", 1, 0, 1.0, ("saved",), [b"x"], {"k": "v"}], ids=repr)
def test_a_return_frame_is_the_reply_frame_of_its_result_made_once_or_not(result: object) -> None:
    """The constant answers' replies are made once; each is the same bytes as reply_frame's, and 1 is never True's."""
    assert wire.return_frame(result) == wire.reply_frame(wire.RETURN, result)
    kind, decoded = wire.load_reply(wire.return_frame(result)[4:])
    assert kind == wire.RETURN and decoded == result and type(decoded) is type(result)


@pytest.mark.parametrize("result", [
    "", "other", "x" * 255, "x" * 256, "é" * 127, "é" * 128, "€" * 30_000, "\x00\n.", "\ud800", "a\udfffb" * 100,
    b"", b"saved", b"\x00" * 255, b"\x86." * 128, bytes(range(256)) * 300,
], ids=lambda result: f"{type(result).__name__}-{len(result)}")
def test_a_str_or_bytes_return_frame_written_out_reads_as_pickle_dumps_own(result: str | bytes) -> None:
    """A str or bytes reply's pickle is written out (no FRAME, no MEMOIZE), not made by pickle.dumps: every unpickler
    (kvmgr's client, a stdlib proxy's pickle.loads) reads the same reply from it, and its header is its length."""
    made = wire.return_frame(result)
    assert wire.HEADER.unpack_from(made)[0] == len(made) - 4
    for decode in (pickle.loads, wire.load_reply):
        kind, decoded = decode(made[4:])
        assert kind == wire.RETURN and decoded == result and type(decoded) is type(result)
    assert pickle.loads(made[4:]) == pickle.loads(wire.reply_frame(wire.RETURN, result)[4:])


def test_a_reply_read_without_an_unpickler_is_read_as_the_unpickler_reads_it_or_not_at_all() -> None:
    """load_reply's shortcut for written-out str/bytes replies agrees with the unpickler on every near miss: a length
    byte off by one, a byte cut or added, another opcode, a reply of two values. Each either decodes to what
    _ReplyUnpickler makes of it or fails as it does."""
    rng = random.Random(11)
    originals = [wire.return_frame(value)[4:] for value in ("", "key", "é" * 200, b"", b"v" * 100, b"w" * 300)]
    variants = list(originals)
    for data in originals:
        for _ in range(60):
            mutated = bytearray(data)
            position = rng.randrange(len(mutated))
            choice = rng.randrange(3)
            if choice == 0:
                mutated[position] = rng.randrange(256)
            elif choice == 1:
                del mutated[position]
            else:
                mutated.insert(position, rng.randrange(256))
            variants.append(bytes(mutated))
    for data in variants:
        try:
            kind, result = wire._ReplyUnpickler(io.BytesIO(data)).load()
            expected: object = (kind, result)
        except Exception as exc:  # what load_reply makes of it by the unpickler alone, error included
            expected = type(exc)
        try:
            got: object = wire.load_reply(data)
        except Exception as exc:
            got = type(exc)
        if isinstance(expected, type):
            assert isinstance(got, type), (data, got)  # the unpickler refuses it: so does load_reply (its own error)
        else:
            assert got == expected and type(got[1]) is type(expected[1]), data  # type: ignore[index]
