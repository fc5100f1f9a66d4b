"""The manager transport for asyncio: AsyncClient speaks the kvmgr protocol on asyncio streams, no threads.

Many tasks share one connection. The protocol has no request ids: the server answers a connection's
requests in the order they came, so each request takes the next slot in a FIFO line as it is written, and
one reader task hands every reply to the slot at the head of the line. A request is handed to the transport
whole (the requests of one turn of the event loop together, in one write), so requests never interleave; one
larger than SEND_PIECE goes in pieces, each after the connection drained, while no other request is written.

Cancellation never shifts answers. A task cancelled (or timed out) after its request was written keeps its
slot: its reply is read and dropped. A task cancelled while its request was cut mid-write leaves a partial
request the server would complete with the next request's bytes: that connection is closed, the other calls
on it fail with OutcomeUnknown, and the next call opens a new one. A call that times out when the connection
brought no byte at all during its whole wait takes the connection as dead the same way.

Blocking calls (lock acquire, wait, queue get, rendezvous) run each on a connection of its own (kept for the
next one when it ends with its reply), so they never hold up the shared line; cancelling one closes its
connection, so a lock granted meanwhile is freed by the server at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from multiprocessing import AuthenticationError
from typing import Any

from kvmgr.client.aio_handshake import authenticate
from kvmgr.client.aio_operations import AsyncAttempt, AsyncOperations, runs_alone
from kvmgr.client.manager import MAX_REPLY_BYTES, _reason, _result
from kvmgr.client.operations import Call
from kvmgr.client.retry import DEFAULT_RETRY, NO_RETRY, RetryPolicy
from kvmgr.config import DEFAULT_TIMEOUT, MAX_IDLE_CONNECTIONS, MAX_REQUEST_BYTES, SEND_PIECE, Address, format_address
from kvmgr.errors import AuthenticationFailed, InvalidValue, KvmgrError, OutcomeUnknown, ProtocolError, ServerUnavailable
from kvmgr.protocol import wire

READ_CHUNK = 256 * 1024  # the most one read of replies takes
STREAM_LIMIT = 4 * 1024 * 1024  # bytes a connection buffers before asyncio stops reading it for a while
REOPEN_ATTEMPTS = 3  # how often a call whose connection closed before it was written moves to a new one


class ChannelClosed(Exception):
    """The connection closed before this call wrote anything: it may go on a new connection."""


class Channel:
    """One authenticated connection carrying many calls at once, their replies matched in FIFO order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str, ident: Any, max_request_bytes: int) -> None:
        self.reader, self.writer, self.where = reader, writer, where
        self.ident, self.max_request_bytes = ident, max_request_bytes
        self.pending: deque[tuple[asyncio.Future[tuple[str, Any]], str]] = deque()  # (reply, method) per request written
        self.closed_reason: str | None = None
        self.received = 0  # bytes read so far: tells a slow connection from a dead one
        self._piecewise = asyncio.Lock()  # held while a large request is written in pieces
        self._outgoing: list[bytes] = []  # whole requests queued in this turn of the event loop, written together at its end
        self.reader_task = asyncio.get_running_loop().create_task(self._read_replies(), name=f"kvmgr-replies-{where}")

    def request(self, method: str, args: tuple) -> bytes:
        """The framed request for one call; InvalidValue if it is larger than the server accepts (nothing is sent)."""
        payload = wire.dump((self.ident, method, args, {}))
        if len(payload) > self.max_request_bytes:
            raise InvalidValue(f"{method}: the request is {len(payload)} bytes; the server accepts at most {self.max_request_bytes}")
        return wire.frame(payload)

    async def call(self, method: str, args: tuple, seconds: float) -> tuple[str, Any]:
        """Write one request and wait for its reply, all within `seconds`; the reply (kind, result).

        ChannelClosed if the connection was closed before anything was written; OutcomeUnknown if the reply
        does not come; ServerUnavailable if the request was not taken in time (it was not made).
        """
        request = self.request(method, args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, Any]] = loop.create_future()
        progress, written = self.received, False
        try:
            async with asyncio.timeout(seconds):
                if len(request) > SEND_PIECE or self._piecewise.locked():
                    await self._write_in_pieces(request, future, method)
                else:
                    self._write_whole(request, future, method)
                written = True
                await self._drain()
                return await future
        except TimeoutError:
            raise self._timed_out(method, seconds, written, progress) from None
        finally:
            if not future.done():
                future.cancel()  # the slot stays in line: its reply is read and dropped
            elif not future.cancelled():
                future.exception()  # retrieved: an error set on it while nobody awaited it is not logged as lost

    def _write_whole(self, request: bytes, future: asyncio.Future[tuple[str, Any]], method: str) -> None:
        """Take the next slot and queue the whole request, with no await in between: the requests queued in one turn
        of the event loop go to the transport together, in order, in one write (one system call for many tasks)."""
        if self.closed_reason is not None:
            raise ChannelClosed(self.closed_reason)
        self.pending.append((future, method))
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(request)

    def _flush(self) -> None:
        """Hand the queued requests to the transport in one write."""
        outgoing = self._outgoing
        if outgoing and self.closed_reason is None:
            self.writer.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))
        outgoing.clear()

    async def _write_in_pieces(self, request: bytes, future: asyncio.Future[tuple[str, Any]], method: str) -> None:
        """Write a large request piece by piece, nothing else written meanwhile; cut mid-write, the connection is closed."""
        async with self._piecewise:
            if self.closed_reason is not None:
                raise ChannelClosed(self.closed_reason)
            self._flush()  # the requests queued before it go first
            self.pending.append((future, method))
            view = memoryview(request)
            try:
                for start in range(0, len(request), SEND_PIECE):
                    if start:
                        await self._drain()
                    self.writer.write(view[start:start + SEND_PIECE])
            except BaseException:
                self.close(f"a {method} request was cut mid-write")  # the server would take the next bytes as its rest
                raise

    async def _drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark; a broken connection closes this channel."""
        try:
            await self.writer.drain()
        except OSError as exc:
            self.close(_reason(exc))

    def _timed_out(self, method: str, seconds: float, written: bool, progress: int) -> ServerUnavailable:
        """The error of a call that ran out of time; the connection is closed if it brought nothing meanwhile."""
        if not written:
            return ServerUnavailable(f"{method}: {self.where} did not take the request within {seconds:g}s; it was not made")
        if self.received == progress:
            self.close(f"no reply within {seconds:g}s", timed_out=True)
        return OutcomeUnknown(
            f"{method}: no reply from {self.where} within {seconds:g}s; it may or may not have taken effect", timed_out=True,
        )

    async def _read_replies(self) -> None:
        """Read replies as they come and hand each to the oldest slot; the channel closes when the connection does."""
        buffer = bytearray()
        try:
            while True:
                chunk = await self.reader.read(READ_CHUNK)
                if not chunk:
                    raise EOFError("connection closed")
                self.received += len(chunk)
                buffer += chunk
                start = 0
                while (bounds := wire.message_bounds(buffer, MAX_REPLY_BYTES, start)) is not None and len(buffer) >= bounds[1]:
                    self._deliver(bytes(buffer[bounds[0]:bounds[1]]))
                    start = bounds[1]
                del buffer[:start]
        except (OSError, EOFError, ProtocolError) as exc:
            self.close(_reason(exc))

    def _deliver(self, message: bytes) -> None:
        """Give one reply to the slot at the head of the line (dropped if its caller is gone)."""
        if not self.pending:
            raise ProtocolError("the server sent a reply nobody asked for")
        future, method = self.pending.popleft()
        if future.done():
            return
        try:
            future.set_result(wire.load_reply(message))
        except ProtocolError as exc:
            future.set_exception(OutcomeUnknown(
                f"{method}: unreadable reply from {self.where} ({exc}); it may or may not have taken effect",
            ))
            raise

    def close(self, reason: str, timed_out: bool = False) -> None:
        """Close the connection now; every call still waiting on it fails with OutcomeUnknown (closing twice is harmless)."""
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._outgoing.clear()
        self.writer.transport.abort()
        while self.pending:
            future, method = self.pending.popleft()
            if not future.done():
                future.set_exception(OutcomeUnknown(
                    f"{method}: lost the connection to {self.where} ({reason}); it may or may not have taken effect", timed_out=timed_out,
                ))
        if self.reader_task is not asyncio.current_task():
            self.reader_task.cancel()


class AsyncClient(AsyncOperations):
    """A kvmgr server's store for asyncio: any number of tasks at once, pipelined on one connection.

    Every call is bounded by `timeout` seconds (a blocking call by its own timeout plus that); it reconnects
    by itself, and repeats a call safe to repeat whose connection broke, as the retry policy says.
    """

    def __init__(
        self, address: Address, authkey: bytes, timeout: float = DEFAULT_TIMEOUT, name: str = "client",
        *, retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.name = name
        self.retry = retry
        self._authkey = authkey
        self._where = format_address(address)
        self._shared: Channel | None = None
        self._opening: asyncio.Task[Channel] | None = None
        self._spares: list[Channel] = []  # idle connections for blocking calls
        self._alone: set[Channel] = set()  # connections with a blocking call in flight

    async def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        """One attempt: a blocking call on a connection of its own, any other on the shared one."""
        seconds = self.timeout if timeout is None else timeout
        if runs_alone(method):
            return await self._call_alone(method, args, seconds)
        for _ in range(REOPEN_ATTEMPTS):
            channel = self._shared
            if channel is None or channel.closed_reason is not None:
                channel = await self._shared_channel()
            try:
                return _result(await channel.call(method, args, seconds))
            except ChannelClosed:
                continue  # nothing was written: the call goes on the next connection
        raise ServerUnavailable(f"{method}: the connection to {self._where} kept closing before the request was written; it was not made")

    async def _run_pipeline(self, calls: list[Call], attempt: AsyncAttempt | None = None) -> list[Any]:
        """Every call at once on the shared connection, written in order (the server answers in order); none is repeated.

        A call's own error comes back in its place; ServerUnavailable (OutcomeUnknown included) is raised.
        """
        answers = await asyncio.gather(*((attempt or self._call)(method, args, None) for method, args in calls), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, ServerUnavailable) or (isinstance(answer, BaseException) and not isinstance(answer, KvmgrError)):
                raise answer
        return answers

    async def _shared_channel(self) -> Channel:
        """The shared connection, opened once for all the tasks that need it at the same moment."""
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open_shared())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    async def _open_shared(self) -> Channel:
        channel = await self.open_channel()
        self._shared = channel
        return channel

    def _opened(self, task: asyncio.Task[Channel]) -> None:
        """Forget a finished opening (its error reached the tasks that waited for it)."""
        if self._opening is task:
            self._opening = None
        if not task.cancelled():
            task.exception()  # retrieved: a failure nobody awaited is not logged as lost

    async def _call_alone(self, method: str, args: tuple, seconds: float) -> Any:
        """A blocking call on a connection of its own: kept for the next one if the call ended with its reply, else closed."""
        for _ in range(REOPEN_ATTEMPTS):
            channel = self._spare() or await self.open_channel()
            self._alone.add(channel)
            try:
                reply = await channel.call(method, args, seconds)
            except ChannelClosed:
                continue
            except BaseException:
                channel.close(f"{method} ended without its reply")
                raise
            finally:
                self._alone.discard(channel)
            self._keep(channel)
            return _result(reply)
        raise ServerUnavailable(f"{method}: the connection to {self._where} kept closing before the request was written; it was not made")

    def _spare(self) -> Channel | None:
        """An idle connection for a blocking call, if one is still open."""
        while self._spares:
            channel = self._spares.pop()
            if channel.closed_reason is None:
                return channel
        return None

    def _keep(self, channel: Channel) -> None:
        if len(self._spares) < MAX_IDLE_CONNECTIONS and channel.closed_reason is None:
            self._spares.append(channel)
        else:
            channel.close("not needed")

    async def open_channel(self) -> Channel:
        """A new authenticated connection with the store opened on it, within the client's timeout.

        ServerUnavailable or AuthenticationFailed if that cannot be done.
        """
        writer: asyncio.StreamWriter | None = None
        step = "connect"
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect()
                step = "handshake"
                await authenticate(reader, writer, self._authkey)
                step = "open_store"
                ident, max_request_bytes = await self._open_store(reader, writer)
        except AuthenticationError:
            _abort(writer)
            raise AuthenticationFailed(
                f"kvmgr server at {self._where} rejected the authkey (check $KVMGR_AUTHKEY or --authkey-file)",
            ) from None
        except (OSError, EOFError, ProtocolError) as exc:  # TimeoutError is an OSError
            _abort(writer)
            raise ServerUnavailable(_connect_failure(self._where, step, exc)) from None
        except BaseException:
            _abort(writer)
            raise
        return Channel(reader, writer, self._where, ident, max_request_bytes)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.address, str):
            return await asyncio.open_unix_connection(self.address, limit=STREAM_LIMIT)
        return await asyncio.open_connection(self.address[0], self.address[1], limit=STREAM_LIMIT)

    async def _open_store(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[Any, int]:
        """open_store (protocol version 1): the ident to name in requests and the largest request the server reads."""
        writer.write(wire.frame(wire.dump((None, wire.OPEN_STORE, (wire.PROTOCOL_VERSION,), {}))))
        size = wire.HEADER.unpack(await reader.readexactly(wire.HEADER.size))[0]
        if not 0 <= size <= MAX_REQUEST_BYTES:
            raise ProtocolError(f"bad reply length {size}")
        kind, opened = wire.load_reply(await reader.readexactly(size))
        if kind != wire.RETURN or not isinstance(opened, dict):
            raise ProtocolError(f"the server refused to open the store: {opened}")
        return opened["ident"], opened["max_request_bytes"]

    def session(self) -> AsyncClient:
        """A client of the same store with connections of its own, never repeating a call."""
        return AsyncClient(self.address, self._authkey, self.timeout, self.name, retry=NO_RETRY)

    async def close(self) -> None:
        """Close every connection (calls in flight fail with OutcomeUnknown); the next call reconnects."""
        if self._opening is not None:  # its waiters find the connection closed and open another
            self._opening.add_done_callback(_close_opened)
        channels = [channel for channel in (self._shared, *self._spares, *self._alone) if channel is not None]
        self._shared, self._spares = None, []
        for channel in channels:
            channel.close("the client was closed")
        await asyncio.gather(*(channel.reader_task for channel in channels), return_exceptions=True)


def _close_opened(task: asyncio.Task[Channel]) -> None:
    """Close the connection an opening made after its client was closed."""
    if not task.cancelled() and task.exception() is None:
        task.result().close("the client was closed")


def _abort(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.transport.abort()


def _connect_failure(where: str, step: str, exc: BaseException) -> str:
    """One line saying which step of opening a connection failed, and why."""
    reason = "timed out" if isinstance(exc, TimeoutError) else _reason(exc)
    if isinstance(exc, asyncio.IncompleteReadError):
        reason = "connection closed"
    if step == "connect":
        return f"cannot reach kvmgr server at {where}: {reason}"
    if step == "handshake":
        return f"kvmgr server at {where} did not complete the handshake: {reason}"
    return f"kvmgr server at {where} did not open the store: {reason}"
