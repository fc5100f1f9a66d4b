"""One event loop owns every socket of the server: it accepts, runs each handshake as a state machine, reads frames,
dispatches them and writes the replies, buffered when the peer is slow. No thread per connection, none per call.

- Requests that arrive together are answered with one write; replies on a connection keep request order (the
  manager protocol has no request ids), so a Deferred reply holds back the replies behind it on its connection.
- A Deferred settled by another thread (the journal's group committer) wakes the loop through a socketpair.
- Timers (a heap) end handshakes that take too long, time deferred calls out, and check stalled readers.
- A connection whose write buffer reaches `write_buffer_bytes` is not read (nor its buffered requests answered)
  until the peer takes some replies; one that takes nothing for `stalled_reader_timeout` seconds is disconnected.
- Subclasses say what a request means: `first_request` (the manager calls: open_store, accept_connection, ...)
  and `dispatch` (a call on an open store).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from kvmgr.config import ACCEPT_PAUSE, DRAIN_TIMEOUT, MAX_READ, READ_SIZE, Limits, format_address
from kvmgr.errors import KvmgrError, ProtocolError, ServerUnavailable
from kvmgr.protocol import handshake, wire
from kvmgr.server.deferred import Deferred

log = logging.getLogger("kvmgr.server.manager")

READ, WRITE = select.POLLIN, select.POLLOUT  # the same bits as EPOLLIN and EPOLLOUT
BROKEN = select.POLLERR | select.POLLHUP  # reported as readable: the read says what happened
READABLE = READ | BROKEN
SHUTTING_DOWN = "the server is shutting down: the call was not completed"
CHALLENGED, WELCOMED, ANSWERED, AUTHENTICATED, SERVING, CLOSING = range(6)  # a connection's phases, in order

Timer = list  # [when, sequence number, callback or None once cancelled]
_unpack_header = wire.HEADER.unpack_from


class Poll:
    """select.poll with epoll's interface (timeouts in seconds), for systems without epoll (macOS, the BSDs)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self.register, self.modify, self.unregister = self._poll.register, self._poll.modify, self._poll.unregister

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """The ready descriptors and their events, waiting at most `timeout` seconds."""
        return self._poll.poll(timeout * 1000)

    def close(self) -> None:
        """Nothing to release: a poll object holds no descriptor."""


def new_poller() -> select.epoll | Poll:
    """epoll where the system has it (Linux: the cheapest wake-up), else poll."""
    return select.epoll() if hasattr(select, "epoll") else Poll()


class Slot:
    """A reply still to come on a connection: the Deferred and its timeout's timer."""

    __slots__ = ("deferred", "timer")

    def __init__(self, deferred: Deferred, timer: Timer | None) -> None:
        self.deferred, self.timer = deferred, timer


class Connection:
    """One peer's socket and its state: its phase, the bytes read and not yet parsed, the replies not yet written."""

    __slots__ = ("closed", "counted", "events", "fd", "holds", "inbuf", "nonce", "out", "out_size", "paused", "peer", "pending",
                 "phase", "progress_at", "sock", "timer", "want")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock, self.fd, self.peer = sock, sock.fileno(), peer
        self.phase = CHALLENGED
        self.inbuf = bytearray()
        self.want = READ_SIZE  # how much the next read asks for
        self.out: list[bytes | memoryview] = []  # framed replies not yet written, in order
        self.out_size = 0
        self.pending: deque[bytes | Slot] = deque()  # replies waiting behind a Deferred, in request order
        self.events = 0
        self.paused = False  # its write buffer is full: not read until the peer takes some
        self.progress_at = 0.0
        self.closed = False
        self.counted = False  # counted among the open connections (max_connections)
        self.timer: Timer | None = None  # the handshake's deadline, until the first request (None after)
        self.nonce = b""
        self.holds: dict[object, Callable[[], object]] | None = None  # what to let go of when it closes (a lock it holds)

    def hold(self, what: object, release: Callable[[], object]) -> None:
        """Call release() when this connection closes (a lock it was granted), unless dropped first."""
        if self.holds is None:
            self.holds = {}
        self.holds[what] = release

    def drop(self, what: object) -> None:
        """Forget what hold() was told (the lock was released)."""
        if self.holds:
            self.holds.pop(what, None)


class EventLoop:
    """The loop: serves the listening socket until stopped, then shuts down gracefully."""

    def __init__(self, listener: socket.socket, authkey: bytes, limits: Limits) -> None:
        self.listener = listener
        self.authkey = bytes(authkey)
        self.limits = limits
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        self.selector = new_poller()  # of fds: the listener, the wake socket and self.connections
        self.connections: dict[int, Connection] = {}
        self.current: Connection | None = None  # the connection whose request dispatch() is running
        self.handshakes = 0  # connections that have not made their first request yet
        self.open = 0  # authenticated connections serving calls
        self._timers: list[Timer] = []
        self._dead_timers = 0
        self._sequence = itertools.count()
        self._ready: deque[Connection] = deque()  # connections with a Deferred settled since the loop last looked
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._woken = False
        self._thread_id = 0
        self._state = "new"
        self._state_lock = threading.Lock()
        listener.setblocking(False)

    # --- what a subclass provides ---

    def first_request(self, conn: Connection, payload: bytes) -> None:
        """Answer the first request of an authenticated connection (queue a reply, then `serve` or `finish` it)."""
        raise NotImplementedError

    def dispatch(self, payload: bytes) -> bytes | Deferred:
        """Run one call on a serving connection: its framed reply, or a Deferred of the result."""
        raise NotImplementedError

    def before_drain(self) -> None:
        """Called on shutdown once no more requests are read, before deferred calls are failed (commit what is pending)."""

    # --- running and stopping ---

    def run(self) -> None:
        """Serve until stop(), then shut down: stop accepting, answer what is in flight, fail deferred calls, drain."""
        with self._state_lock:
            if self._state != "new":
                return
            self._state = "running"
        self._thread_id = threading.get_ident()
        self.selector.register(self.listener.fileno(), READ)
        self.selector.register(self._wake_r.fileno(), READ)
        try:
            while not self.stop_event.is_set():
                self._turn()
        finally:
            self._shut_down()

    def stop(self) -> None:
        """Ask the loop to shut down (from any thread, or a signal handler)."""
        self.stop_event.set()
        self._wake()

    def close(self) -> None:
        """Stop the loop and wait until it has shut down (or shut down here, if it never ran)."""
        self.stop()
        with self._state_lock:
            state = self._state
            if state == "new":
                self._state = "closed"
        if state == "new":
            self._shut_down()
        else:
            self.finished.wait(DRAIN_TIMEOUT + 30)

    def _turn(self) -> None:
        """One round: wait for sockets (or the next timer), handle them, release settled replies, run due timers."""
        timers = self._timers
        now = time.monotonic() if timers else 0.0
        timeout = timers[0][0] - now if timers else 1.0
        timeout = 1.0 if timeout > 1.0 else 0.0 if timeout < 0.0 else timeout  # not min/max: they cost 10x as much
        connections = self.connections
        events = self.selector.poll(timeout)
        for fd, mask in events:
            conn = connections.get(fd)
            if conn is not None:
                if mask & READABLE:
                    self._on_readable(conn)
                if mask & WRITE and not conn.closed:
                    self._send(conn)
            elif fd == self._wake_r.fileno():
                self._drain_wake()
            elif fd == self.listener.fileno():
                self._accept()
        if timers and timers[0][0] <= (now if events else time.monotonic()):  # busy: a timer due meanwhile runs next turn
            self._run_timers()  # before releasing replies: a timer may settle one (a call's timeout, a lease that ends)
        if self._ready:
            self._run_ready()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        self._woken = False  # after draining: a wake sent meanwhile stays readable, none is lost

    # --- accepting and handshakes ---

    def _accept(self) -> None:
        """Take every connection waiting; greet each with a challenge, or refuse it when too many handshakes are pending."""
        while True:
            try:
                sock, peer = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc.strerror or exc)
                self.selector.unregister(self.listener.fileno())
                self.call_later(ACCEPT_PAUSE, partial(self.selector.register, self.listener.fileno(), READ))
                return
            name = format_address(peer) if peer else "unix-peer"
            if self.handshakes >= self.limits.max_pending_handshakes:
                log.warning("rejected peer %s: %d handshakes already pending", name, self.limits.max_pending_handshakes)
                sock.close()
                continue
            self._greet(sock, name)

    def _greet(self, sock: socket.socket, name: str) -> None:
        sock.setblocking(False)
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies go out at once, never behind Nagle
        conn = Connection(sock, name)
        self.connections[conn.fd] = conn
        self.handshakes += 1
        conn.timer = self.call_later(self.limits.handshake_timeout, partial(self._handshake_expired, conn))
        conn.events = READ
        self.selector.register(conn.fd, READ)
        conn.nonce = handshake.new_challenge()
        self.queue(conn, wire.frame(handshake.CHALLENGE + conn.nonce))
        self._flush(conn)

    def _handshake_expired(self, conn: Connection) -> None:
        if not conn.closed and conn.phase < SERVING:
            self._reject(conn, f"no handshake within {self.limits.handshake_timeout:g}s")

    def _reject(self, conn: Connection, reason: str, last_words: bytes = b"") -> None:
        """Log one line and close a peer that failed its handshake (after sending last_words, if any)."""
        log.warning("rejected peer %s: %s", conn.peer, reason)
        if last_words:
            self.queue(conn, wire.frame(last_words))
            self.finish(conn)
        else:
            self._close(conn)

    def _handshake_step(self, conn: Connection, message: bytes) -> None:
        """One handshake message: the response to our challenge, the peer's challenge, its verdict, its first request."""
        phase = conn.phase
        if phase == CHALLENGED:
            if not handshake.accepts(self.authkey, conn.nonce, message):
                self._reject(conn, "wrong authkey", handshake.FAILURE)
                return
            self.queue(conn, wire.frame(handshake.WELCOME))
        elif phase == WELCOMED:
            answer = handshake.response_to(self.authkey, message)
            if answer is None:
                self._reject(conn, "sent no challenge")
                return
            self.queue(conn, wire.frame(answer))
        elif phase == ANSWERED:
            if message != handshake.WELCOME:
                self._reject(conn, "wrong authkey")
                return
        else:
            self._end_handshake(conn)
            self.first_request(conn, message)
            return
        conn.phase = phase + 1

    def _end_handshake(self, conn: Connection) -> None:
        self.handshakes -= 1
        self._cancel_timer(conn.timer)
        conn.timer = None

    # --- after the first request ---

    def serve(self, conn: Connection) -> bool:
        """Serve calls on conn from now on; False (and a refusal sent) if max_connections are open already."""
        if self.open >= self.limits.max_connections:
            limit = self.limits.max_connections
            log.warning("refused peer %s: %d connections are open, the most --max-connections allows", conn.peer, limit)
            refusal = ServerUnavailable(f"too many connections: the server serves at most {limit} at once (--max-connections)")
            self.queue(conn, wire.reply_frame(wire.ERROR, refusal))
            self.finish(conn)
            return False
        conn.phase = SERVING
        conn.counted = True
        self.open += 1
        return True

    def finish(self, conn: Connection) -> None:
        """Write what is queued on conn, then close it."""
        conn.phase = CLOSING
        if not conn.out:
            self._close(conn)

    def queue(self, conn: Connection, data: bytes) -> None:
        """Queue framed bytes on conn (written by the next flush)."""
        conn.out.append(data)
        conn.out_size += len(data)

    # --- reading ---

    def _on_readable(self, conn: Connection) -> None:
        try:
            chunk = os.read(conn.fd, conn.want)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(conn, exc.strerror or str(exc))
            return
        if not chunk:
            self._lost(conn, "closed the connection during the handshake")
            return
        phase = conn.phase
        if phase == SERVING and not conn.inbuf and not conn.out and not conn.pending and not conn.paused:
            size = len(chunk)
            if size >= 4 and _unpack_header(chunk)[0] == size - 4:  # the usual case: one whole request
                if not self._reply_at_once(conn, chunk[4:]):
                    self._send(conn)
                return
        elif phase == CLOSING:
            return  # nothing more is read from a connection being closed
        conn.inbuf += chunk
        self._take_messages(conn)
        if not conn.closed:
            self._send(conn)

    def _lost(self, conn: Connection, reason: str) -> None:
        """The peer went away (or its socket failed)."""
        if conn.phase < SERVING:
            log.warning("rejected peer %s: %s", conn.peer, reason)
        self._close(conn)

    def _take_messages(self, conn: Connection) -> None:
        """Handle every whole message buffered on conn, until it closes or its write buffer fills."""
        buffer = conn.inbuf
        offset = 0
        while conn.phase < CLOSING and not conn.paused and not conn.closed:
            limit = self.limits.max_request_bytes if conn.phase >= AUTHENTICATED else handshake.MAX_MESSAGE
            try:
                bounds = wire.message_bounds(buffer, limit, offset)
            except ProtocolError as exc:
                self._lost(conn, str(exc))
                return
            if bounds is None or len(buffer) < bounds[1]:
                conn.want = min(max(bounds[1] - len(buffer), READ_SIZE), MAX_READ) if bounds else READ_SIZE
                break
            start, offset = bounds
            message = bytes(buffer[start:offset])
            if conn.phase == SERVING:
                self._answer(conn, message)
            else:
                self._handshake_step(conn, message)
        if offset and not conn.closed:
            del buffer[:offset]

    def _reply_at_once(self, conn: Connection, payload: bytes) -> bool:
        """The hot path, for a lone request on an idle connection: dispatch it and write its reply; True if all went out."""
        self.current = conn
        reply = self.dispatch(payload)
        if isinstance(reply, Deferred):
            self._defer(conn, reply)
            return False
        written = self._write(conn, reply)
        if written is None:
            return True
        if written == len(reply):
            return True
        self.queue(conn, reply[written:])
        if conn.out_size >= self.limits.write_buffer_bytes:
            self._pause(conn)
        return False

    def _answer(self, conn: Connection, payload: bytes) -> None:
        """Dispatch one call and queue its reply in request order."""
        self.current = conn
        reply = self.dispatch(payload)
        if type(reply) is bytes and not conn.pending:
            conn.out.append(reply)
            conn.out_size += len(reply)
        elif isinstance(reply, Deferred):
            self._defer(conn, reply)
        else:
            conn.pending.append(reply)
        if conn.out_size >= self.limits.write_buffer_bytes and not conn.paused:
            self._pause(conn)

    def _defer(self, conn: Connection, deferred: Deferred) -> None:
        timer = None
        if deferred.timeout is not None:
            timer = self.call_later(deferred.timeout, partial(deferred.cancel, deferred.timeout_error or KvmgrError("timed out")))
        conn.pending.append(Slot(deferred, timer))
        deferred.add_done_callback(lambda _: self._settled(conn))

    def _settled(self, conn: Connection) -> None:
        """A Deferred of conn was decided (in any thread): have the loop release its replies."""
        self._ready.append(conn)
        if threading.get_ident() != self._thread_id and not self._woken:
            self._woken = True
            self._wake()

    def _run_ready(self) -> None:
        ready = self._ready
        while ready:
            conn = ready.popleft()
            if not conn.closed:
                self._release(conn)
                self._send(conn)

    def _release(self, conn: Connection) -> None:
        """Move the replies at the head of conn's pending queue that are decided to its write buffer."""
        pending = conn.pending
        while pending:
            head = pending[0]
            if isinstance(head, Slot):
                deferred = head.deferred
                if not deferred.done:
                    return
                self._cancel_timer(head.timer)
                data = self.outcome_frame(deferred)
            else:
                data = head
            pending.popleft()
            self.queue(conn, data)

    def outcome_frame(self, deferred: Deferred) -> bytes:
        """The framed reply of a decided Deferred."""
        if deferred.error is not None:
            return self.error_frame(deferred.error)
        return wire.return_frame(deferred.value)

    def error_frame(self, exc: Exception) -> bytes:
        """The framed error reply for exc (logged when it is no kvmgr error: that is a bug to report)."""
        sent = wire.sendable_error(exc)
        if sent is not exc:
            log.warning("a call failed unexpectedly: %s: %s", type(exc).__name__, exc)
        return wire.reply_frame(wire.ERROR, sent)

    # --- writing ---

    def _send(self, conn: Connection) -> None:
        """Write what conn has queued; once a full buffer has room again, answer the requests buffered meanwhile."""
        self._flush(conn)
        while conn.paused and not conn.closed and conn.out_size < self.limits.write_buffer_bytes:
            conn.paused = False  # the peer took enough: answer the requests buffered meanwhile, and read again
            self._take_messages(conn)
            self._flush(conn)

    def _flush(self, conn: Connection) -> None:
        """Write what conn has queued, as far as the socket takes it; keep the rest and watch for writability."""
        out = conn.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            written = self._write(conn, data)
            if written is None:
                return
            if written == len(data):
                out.clear()
                conn.out_size = 0
            else:
                conn.out = [memoryview(data)[written:]]
                conn.out_size = len(data) - written
            if written and conn.paused:
                conn.progress_at = time.monotonic()
        if conn.phase == CLOSING and not conn.out:
            self._close(conn)
        else:
            self._watch(conn)

    def _write(self, conn: Connection, data: bytes | memoryview) -> int | None:
        """Write what the socket takes of data now: the bytes written, or None if the socket failed (conn is closed)."""
        try:
            return os.write(conn.fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            self._close(conn)
            return None

    def _watch(self, conn: Connection) -> None:
        """Have the selector report what conn waits for: requests (unless paused or closing), room to write."""
        wanted = (READ if conn.phase < CLOSING and not conn.paused else 0) | (WRITE if conn.out else 0)
        if wanted == conn.events or conn.closed:
            return
        if not wanted:
            self.selector.unregister(conn.fd)
        elif not conn.events:
            self.selector.register(conn.fd, wanted)
        else:
            self.selector.modify(conn.fd, wanted)
        conn.events = wanted

    def _pause(self, conn: Connection) -> None:
        """conn's write buffer is full: stop reading it until the peer takes replies; disconnect it if it takes none."""
        conn.paused = True
        conn.progress_at = time.monotonic()
        self.call_later(self.limits.stalled_reader_timeout, partial(self._check_stalled, conn))

    def _check_stalled(self, conn: Connection) -> None:
        if conn.closed or not conn.paused:
            return
        idle = time.monotonic() - conn.progress_at
        if idle < self.limits.stalled_reader_timeout:
            self.call_later(self.limits.stalled_reader_timeout - idle, partial(self._check_stalled, conn))
            return
        log.warning("disconnected peer %s: it read none of its replies for %gs (%d bytes waiting)",
                    conn.peer, self.limits.stalled_reader_timeout, conn.out_size)
        self._close(conn)

    # --- closing ---

    def _close(self, conn: Connection, error: Exception | None = None) -> None:
        """Close conn; its deferred calls are cancelled (whoever deferred them hears of it)."""
        if conn.closed:
            return
        conn.closed = True
        if conn.events:
            self.selector.unregister(conn.fd)
        conn.events = 0
        del self.connections[conn.fd]
        conn.sock.close()
        if conn.timer is not None:
            self._end_handshake(conn)
        if conn.counted:
            self.open -= 1
        cancelled = error or ServerUnavailable("the connection closed")
        for item in conn.pending:
            if isinstance(item, Slot):
                self._cancel_timer(item.timer)
                item.deferred.cancel(cancelled)
        conn.pending.clear()
        conn.out.clear()
        holds, conn.holds = conn.holds, None
        for release in (holds or {}).values():
            release()

    def _shut_down(self) -> None:
        """Stop accepting, let the subclass commit, fail deferred calls, write what is queued (bounded), close everything."""
        with contextlib.suppress(OSError, ValueError, KeyError):  # KeyError: poll, with the listener paused after accept failed
            self.selector.unregister(self.listener.fileno())
        self.listener.close()
        for conn in list(self.connections.values()):
            if conn.phase < SERVING:
                self._close(conn)
            else:
                conn.phase = CLOSING
        self.before_drain()
        shutting_down = ServerUnavailable(SHUTTING_DOWN)
        for conn in list(self.connections.values()):
            for item in list(conn.pending):
                if isinstance(item, Slot):
                    item.deferred.cancel(item.deferred.stop_error or shutting_down)
            self._release(conn)
            self._flush(conn)
        self._drain()
        for conn in list(self.connections.values()):
            self._close(conn)
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self.finished.set()

    def _drain(self) -> None:
        """Write the replies still queued, for at most DRAIN_TIMEOUT."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.connections and time.monotonic() < deadline:
            for fd, mask in self.selector.poll(max(0.0, deadline - time.monotonic())):
                conn = self.connections.get(fd)
                if conn is not None and mask & (WRITE | BROKEN):
                    self._flush(conn)
                elif fd == self._wake_r.fileno():
                    self._drain_wake()

    # --- timers ---

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        """Run callback on the loop in `delay` seconds; returns the timer, for _cancel_timer."""
        timer: Timer = [time.monotonic() + delay, next(self._sequence), callback]
        heapq.heappush(self._timers, timer)
        return timer

    def _cancel_timer(self, timer: Timer | None) -> None:
        if timer is not None and timer[2] is not None:
            timer[2] = None
            self._dead_timers += 1
            timers = self._timers
            while timers and timers[0][2] is None:  # the dead at the head go now: with none left, a turn reads no clock
                heapq.heappop(timers)
                self._dead_timers -= 1
            if self._dead_timers > 1024 and self._dead_timers * 2 > len(timers):  # mostly settled calls' timers
                timers[:] = [live for live in timers if live[2] is not None]  # in place: _run_timers holds it
                heapq.heapify(timers)
                self._dead_timers = 0

    def _run_timers(self) -> None:
        timers, now = self._timers, time.monotonic()
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)
            callback, timer[2] = timer[2], None
            if callback is None:
                self._dead_timers -= 1
            else:
                callback()
