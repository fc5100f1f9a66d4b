"""kvmgr faults: fault scenarios against real server processes, and what honest clients saw.

Each scenario starts its own server(s), does something bad to them (kill -9 under writers, hostile peers,
a client killed mid-call, a dead server), and measures: writes acknowledged, writes lost, errors seen by
honest clients and their worst latency. `python -m kvmgr.tools.faults --writer ...` is one writer process.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import multiprocessing
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from tabulate import tabulate

import kvmgr
from kvmgr.client.operations import with_history
from kvmgr.client.retry import NO_RETRY
from kvmgr.config import fresh_authkey, parse_address
from kvmgr.errors import AuthenticationFailed, KeyNotFound, KvmgrError, ServerUnavailable
from kvmgr.tools.arguments import positive_int
from kvmgr.tools.cleanup import delete_run_namespace
from kvmgr.tools.processes import (
    READY_PREFIX,
    ProcessGroup,
    ServerProcess,
    child_environment,
    python_module,
    read_line,
    suspend,
    wait_until_ready,
)
from kvmgr.verify.history import HistoryWriter, read_history

WRITERS = 4
ACKS_BEFORE_KILL = 25
PROGRESS_TIMEOUT = 30.0
HANDSHAKE_TIMEOUT = 1.0
IDLE_CONNECTIONS = 300
HONEST_WRITES = 200


@dataclass
class FaultResult:
    """One row of the fault table."""

    scenario: str
    rounds: int = 0
    acknowledged: int = 0
    lost: int = 0
    honest_errors: int = 0
    worst_latency_ms: float = 0.0
    notes: list[str] = field(default_factory=list)
    wrong_answers: int = 0

    @property
    def passed(self) -> bool:
        """Nothing acknowledged was lost, no answer was wrong and honest clients saw no error."""
        return self.lost == 0 and self.honest_errors == 0 and self.wrong_answers == 0 and not self.notes

    def cells(self) -> list:
        """The row as table cells."""
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.notes or ["lost writes, wrong answers or honest errors"])
        return [self.scenario, self.rounds, self.acknowledged, self.lost, self.wrong_answers, self.honest_errors,
                round(self.worst_latency_ms, 1), verdict]


HEADERS = ("scenario", "rounds", "acknowledged writes", "writes lost", "wrong answers", "honest client errors", "worst latency ms",
           "result")


class HonestClient:
    """A thread that keeps storing and reading its own keys, counting errors and the worst latency."""

    def __init__(self, server: ServerProcess, name: str = "honest") -> None:
        self.client = kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0, name=name)
        self.acknowledged: dict[str, str] = {}
        self.errors: list[str] = []
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            key, value = f"honest-{number}", f"v{number}"
            started = time.monotonic()
            try:
                self.client.store(key, value)
                self.acknowledged[key] = value
                if self.client.get(key) != value:
                    self.errors.append(f"read back a wrong value for {key}")
            except KvmgrError as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.worst = max(self.worst, time.monotonic() - started)
            self._stop.wait(0.002)

    def lost(self) -> int:
        """How many acknowledged writes are not there now."""
        present = self.client.get_many(list(self.acknowledged))
        return sum(present.get(key) != value for key, value in self.acknowledged.items())

    @contextmanager
    def running(self) -> Iterator[HonestClient]:
        """Run in the background for the with-block, and on until it has made HONEST_WRITES writes."""
        self._thread.start()
        try:
            yield self
        finally:
            deadline = time.monotonic() + PROGRESS_TIMEOUT
            while len(self.acknowledged) < HONEST_WRITES and self._thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            self._stop.set()
            self._thread.join(timeout=10)

    def fill(self, result: FaultResult) -> FaultResult:
        """Add what this client saw to a result row and close it."""
        result.acknowledged += len(self.acknowledged)
        result.lost += self.lost()
        result.honest_errors += len(self.errors)
        result.worst_latency_ms = max(result.worst_latency_ms, self.worst * 1000)
        result.notes += self.errors[:1]
        self.client.close()
        return result


def writer_main(argv: list[str]) -> int:
    """One writer process: store unique keys until the server goes away; acknowledged writes go to its history."""
    parser = argparse.ArgumentParser(prog="python -m kvmgr.tools.faults --writer")
    parser.add_argument("--writer", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--history", required=True)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    with HistoryWriter(args.history) as history, kvmgr.connect(args.address, timeout=2.0, name=args.writer, history=history) as client:
        number = 0
        while time.monotonic() < deadline:
            number += 1
            try:
                client.store(f"{args.writer}-{number}", f"value-{number}")
            except ServerUnavailable:
                return 0
    return 0


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def _wait_for_acks(paths: list[Path], count: int | list[int]) -> None:
    """Wait until each history holds `count` lines (or its own count of a list); KvmgrError after PROGRESS_TIMEOUT."""
    counts = count if isinstance(count, list) else [count] * len(paths)
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while any(_count_lines(path) < wanted for path, wanted in zip(paths, counts, strict=True)):
        if time.monotonic() > deadline:
            raise KvmgrError(f"writers made no progress within {PROGRESS_TIMEOUT:g}s")
        time.sleep(0.01)


def kill_server_under_writers(fsync: str, rounds: int) -> FaultResult:
    """kill -9 the server while 4 writers store; restart on the same data; every acknowledged write must be there."""
    result = FaultResult(f"kill -9 server under {WRITERS} writers, --fsync {fsync}")
    with tempfile.TemporaryDirectory(prefix="kvmgr-faults-") as scratch:
        data_dir, address = Path(scratch) / "data", str(Path(scratch) / "kvmgr.sock")
        durable = ["--data-dir", str(data_dir), "--fsync", fsync]
        authkey = None
        for round_number in range(rounds):
            with ProcessGroup() as group:
                server = group.start_server(address, authkey, durable)
                authkey = server.authkey
                paths = [Path(scratch) / f"r{round_number}-w{n}.jsonl" for n in range(WRITERS)]
                writers = [group.launch(python_module("kvmgr.tools.faults", "--writer", f"r{round_number}w{n}", "--address", address,
                                                      "--history", str(path)), child_environment(authkey)) for n, path in enumerate(paths)]
                _wait_for_acks(paths, ACKS_BEFORE_KILL)
                server.process.kill()
                server.process.wait(timeout=5)
                for writer in writers:
                    writer.wait(timeout=PROGRESS_TIMEOUT)
            done = [op for path in paths for op in read_history(path) if op.status == "ok"]
            acknowledged = {op.key: op.value for op in done}
            result.worst_latency_ms = max([result.worst_latency_ms, *((op.end - op.start) / 1e6 for op in done if op.end is not None)])
            with ProcessGroup() as group:
                server = group.start_server(address, authkey, durable)
                with kvmgr.connect(address, authkey=authkey.encode()) as client:
                    present = client.get_many(list(acknowledged))
                    client.quit()
                server.process.wait(timeout=5)
            result.rounds += 1
            result.acknowledged += len(acknowledged)
            result.lost += sum(present.get(key) != value for key, value in acknowledged.items())
    return result


def kill_client_mid_call() -> FaultResult:
    """kill -9 a client while its large calls are in flight; the server and an honest client carry on."""
    result = FaultResult("kill -9 of a client mid-call", rounds=1)
    code = ("import sys, kvmgr\nc = kvmgr.connect(sys.argv[1])\n"
            "while True:\n    c.store_many({f'big{i}': 'x' * 100_000 for i in range(50)})\n    print('stored', flush=True)\n")
    with ProcessGroup() as group:
        server = group.start_server()
        honest = HonestClient(server)
        with honest.running():
            victim = group.launch([sys.executable, "-c", code, server.address_text], child_environment(server.authkey))
            deadline = time.monotonic() + PROGRESS_TIMEOUT
            if read_line(victim, deadline) != "stored" or read_line(victim, deadline) != "stored":
                result.notes.append("the victim client never made its calls")
            victim.kill()  # its calls run back to back: it dies in the middle of one (5 MB on the wire)
            victim.wait(timeout=5)
            time.sleep(0.2)
        if server.process.poll() is not None:
            result.notes.append("the server died")
        return honest.fill(result)


def _raw_peer(server: ServerProcess, payload: bytes | None) -> None:
    """Connect without authenticating, send payload (None: send nothing), wait for the server to drop us."""
    family = socket.AF_UNIX if isinstance(server.address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(HANDSHAKE_TIMEOUT + 5)
        sock.connect(server.address)
        if payload is not None:
            sock.sendall(payload)
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass


def _wrong_authkey(server: ServerProcess) -> None:
    try:
        kvmgr.connect(server.address_text, authkey=b"not-the-key", timeout=2.0)
    except AuthenticationFailed:
        return
    raise KvmgrError("a wrong authkey was accepted")


def _idle_connections(server: ServerProcess) -> None:
    """Open IDLE_CONNECTIONS connections that never authenticate and hold each until the server drops it."""
    family = socket.AF_UNIX if isinstance(server.address, str) else socket.AF_INET
    sockets = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.settimeout(HANDSHAKE_TIMEOUT + 5)
            sock.connect(server.address)
        for sock in sockets:
            with contextlib.suppress(OSError):
                while sock.recv(65536):  # the challenge, then nothing until the handshake timeout cuts us off
                    pass
    finally:
        for sock in sockets:
            sock.close()


def _authenticated_abuse(server: ServerProcess) -> None:
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=2.0) as client:
        for method, args in (("_check_key", ("k",)), ("store", (1, "v")), ("store", ("k", {"a set"})),
                             ("store", ("k", "x" * 2_000_000)), ("store", ("k" * 5000, "v")), ("__init__", ())):
            try:
                client.call(method, *args)
            except (KvmgrError, AttributeError, TypeError):
                continue
            raise KvmgrError(f"the server accepted {method}{args!r:.40}")


HOSTILE_PEERS: dict[str, tuple[Callable[[ServerProcess], None], int]] = {
    # name: (what the peer does, how many "rejected peer" lines the server must log)
    "wrong authkey": (_wrong_authkey, 1),
    "random bytes": (lambda server: _raw_peer(server, os.urandom(4096)), 1),
    "absurd length prefix": (lambda server: _raw_peer(server, b"\x7f\xff\xff\xff" + b"x" * 64), 1),
    "HTTP request": (lambda server: _raw_peer(server, b"GET / HTTP/1.1\r\nHost: kvmgr\r\n\r\n"), 1),
    "silent peer (sends nothing)": (lambda server: _raw_peer(server, None), 1),
    f"{IDLE_CONNECTIONS} idle connections": (_idle_connections, IDLE_CONNECTIONS),
    "unexposed method, bad types, oversize key and value": (_authenticated_abuse, 0),
}


def hostile_peer(name: str) -> FaultResult:
    """Run one hostile peer against a server while an honest client works."""
    result = FaultResult(f"hostile peer: {name}", rounds=1)
    attack, rejections = HOSTILE_PEERS[name]
    limits = ["--handshake-timeout", str(HANDSHAKE_TIMEOUT), "--max-value-bytes", "1000000"]
    with ProcessGroup() as group, tempfile.TemporaryFile("w+") as log:
        server = group.start_server(extra_args=limits, log=log)
        honest = HonestClient(server)
        with honest.running():
            try:
                attack(server)
            except (KvmgrError, OSError) as exc:
                result.notes.append(str(exc))
        if server.process.poll() is not None:
            result.notes.append("the server died")
        honest.fill(result)
        _wait_for_log_lines(log, "rejected peer", rejections, result)
    return result


def _wait_for_log_lines(log: IO[str], text: str, count: int, result: FaultResult) -> None:
    """The server logs one line per rejected peer; give it until the handshake timeout has passed to write them."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT + 5
    while True:
        log.seek(0)
        seen = sum(text in line for line in log)
        if seen >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if seen < count:
        result.notes.append(f"server logged {seen} '{text}' lines, expected {count}")


def dead_server_fails_fast(timeout: float = 1.0) -> FaultResult:
    """A call to a killed server and to a hung (stopped) one fails within the client's timeout."""
    result = FaultResult(f"call to a dead and to a hung server (timeout {timeout:g}s)", rounds=2)
    with ProcessGroup() as group:
        for how in ("kill", "suspend"):
            server = group.start_server()
            client = kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=timeout)
            client.store("k", "v")
            result.acknowledged += 1
            if how == "kill":
                server.process.kill()
            else:
                suspend(server.process)
            started = time.monotonic()
            try:
                client.get("k")
                result.notes.append(f"a call to a {how}ed server succeeded")
            except ServerUnavailable:
                pass
            elapsed = time.monotonic() - started
            result.worst_latency_ms = max(result.worst_latency_ms, elapsed * 1000)
            if elapsed > 2 * timeout + 0.5:
                result.notes.append(f"the {how}ed server took {elapsed:.1f}s to fail")
            if how == "suspend":
                server.process.resume()
            client.close()
    return result


def reconnect_after_restart() -> FaultResult:
    """A client's next call after a server restart reconnects by itself, cas included."""
    result = FaultResult("reconnect after a server restart", rounds=1)
    with tempfile.TemporaryDirectory(prefix="kvmgr-faults-") as scratch, ProcessGroup() as group:
        address, durable = str(Path(scratch) / "kvmgr.sock"), ["--data-dir", str(Path(scratch) / "data")]
        server = group.start_server(address, extra_args=durable)
        client = kvmgr.connect(address, authkey=server.authkey.encode(), timeout=2.0)
        client.store("k", "before")
        result.acknowledged += 1
        server.process.terminate()
        server.process.wait(timeout=5)
        group.start_server(address, server.authkey, durable)
        started = time.monotonic()
        try:
            if not client.cas("k", "before", "after"):
                result.lost += 1
            result.acknowledged += 1
        except KvmgrError as exc:
            result.honest_errors += 1
            result.notes.append(f"{type(exc).__name__}: {exc}")
        result.worst_latency_ms = (time.monotonic() - started) * 1000
        client.close()
    return result


class Interrupted(Exception):
    """Raised inside a call by the interrupted-call scenario's timer signal."""


class _Interrupter:
    """A one-shot timer signal at a random moment of a call, raising Interrupted there (and nowhere else)."""

    def __init__(self, seed: int = 0, longest: float = 0.0006) -> None:
        self.armed = False
        self.random = random.Random(seed)
        self.longest = longest
        self.interrupted = 0

    def __call__(self, signum: int, frame: object) -> None:
        if self.armed:
            self.armed = False
            self.interrupted += 1
            raise Interrupted(f"signal {signum}")

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """function(*args); every other call on average is interrupted after a random delay of up to `longest` seconds."""
        self.armed = self.random.random() < 0.5
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, self.random.uniform(0.000005, self.longest))
        try:
            return function(*args)
        finally:
            self.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)


def interrupted_calls(seconds: float = 1.5) -> FaultResult:
    """A timer signal interrupts calls at random points (as a timeout handler or Ctrl-C would); no answer goes astray.

    Each key is stored once with its own value, then read: a read must give that value, or KeyNotFound
    when the store itself was interrupted. Every acknowledged store must be there at the end.
    """
    result = FaultResult("interrupted calls (a signal at a random point of each)", rounds=0)
    interrupter = _Interrupter()
    with ProcessGroup() as group:
        server = group.start_server()
        with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) as client:
            previous = signal.signal(signal.SIGALRM, interrupter)
            try:
                acknowledged = _interrupted_round(client, interrupter, result, time.monotonic() + seconds)
            finally:
                signal.signal(signal.SIGALRM, previous)
            present = client.get_many(list(acknowledged))
    result.rounds = interrupter.interrupted
    result.acknowledged = len(acknowledged)
    result.lost = sum(present.get(key) != value for key, value in acknowledged.items())
    if result.rounds < 100:
        result.notes.append(f"only {result.rounds} calls were interrupted")
    return result


def _interrupted_round(client: Any, interrupter: _Interrupter, result: FaultResult, deadline: float) -> dict[str, str]:
    acknowledged: dict[str, str] = {}
    number = 0
    while time.monotonic() < deadline:
        number += 1
        key, value = f"k{number}", f"v{number}"
        with contextlib.suppress(Interrupted):
            interrupter.call(client.store, key, value)
            acknowledged[key] = value
        for _ in range(3):
            try:
                answer: object = interrupter.call(client.get, key)
            except KeyNotFound:
                answer = None if key not in acknowledged else "KeyNotFound"
            except Interrupted:
                continue
            result.wrong_answers += answer not in (value, None)
    return acknowledged


def shared_by_threads(threads: int = 8, calls: int = 300) -> FaultResult:
    """One client used by 8 threads at once: each must get its own answers."""
    result = FaultResult(f"client shared by {threads} threads", rounds=threads * calls)
    with ProcessGroup() as group:
        server = group.start_server()
        with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) as client:
            outcomes: list[tuple[dict[str, str], int]] = []
            workers = [threading.Thread(target=lambda n=n: outcomes.append(_own_answers(client, f"t{n}", calls))) for n in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(PROGRESS_TIMEOUT)
            _tally(client, outcomes, result, threads)
    return result


def _own_answers(client: Any, name: str, calls: int) -> tuple[dict[str, str], int]:
    """Store and read back keys of one's own; the acknowledged writes and the count of answers that were not ours."""
    acknowledged: dict[str, str] = {}
    wrong = 0
    for number in range(calls):
        key, value = f"{name}-{number % 20}", f"{name}-{number}"
        wrong += client.store(key, value) not in ("saved", "updated")
        acknowledged[key] = value
        wrong += client.get(key) != value
        wrong += client.exists(key) is not True
    return acknowledged, wrong


def _tally(client: Any, outcomes: list[tuple[dict[str, str], int]], result: FaultResult, expected: int) -> None:
    """Add what the workers saw, and what the store holds now, to a result row."""
    if len(outcomes) != expected:
        result.notes.append(f"{expected - len(outcomes)} workers did not finish")
    acknowledged = {key: value for written, _ in outcomes for key, value in written.items()}
    present = client.get_many(list(acknowledged))
    result.acknowledged = len(acknowledged)
    result.lost = sum(present.get(key) != value for key, value in acknowledged.items())
    result.wrong_answers = sum(wrong for _, wrong in outcomes)


_INHERITED: Any = None  # the client a fork Pool's workers inherit


def _inherited_task(number: int) -> tuple[dict[str, str], int]:
    return _own_answers(_INHERITED, f"p{number}", 20)


def inherited_by_fork(tasks: int = 40) -> FaultResult:
    """A module-level client used inside a fork multiprocessing.Pool: each worker must get its own answers."""
    global _INHERITED
    result = FaultResult("client inherited by fork (Pool of 4)", rounds=tasks * 20)
    with ProcessGroup() as group:
        server = group.start_server()
        with kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) as client:
            client.store("parent", "opened before the fork")
            _INHERITED = client
            try:
                with multiprocessing.get_context("fork").Pool(4) as pool:
                    outcomes = _bounded_map(pool, _inherited_task, range(tasks), result)
            finally:
                _INHERITED = None
            result.wrong_answers += client.get("parent") != "opened before the fork"
            _tally(client, outcomes, result, tasks)
    return result


class TmpfsServer:
    """kvmgr servers, one after the other, on a small tmpfs of their own that a test can fill (root only).

    The tmpfs is mounted in a private mount namespace (`unshare --mount`), so nothing else sees it, by a shell
    that then runs `kvmgr serve --data-dir` on it `runs` times in a row (quit one, the next starts on the same
    data). From outside it is reached through /proc/<pid>/root.
    """

    def __init__(self, group: ProcessGroup, data_dir: Path, fsync: str, runs: int = 2, size: str = "8m") -> None:
        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.authkey = fresh_authkey()
        serve = shlex.join(python_module("kvmgr", "serve", "--address", "127.0.0.1:0", "--data-dir", str(data_dir), "--fsync", fsync))
        script = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(data_dir))} && " + " && ".join([serve] * runs)
        self.process = group.launch(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], child_environment(self.authkey))
        self.data_dir = data_dir  # as the server sees it
        self.inside = Path(f"/proc/{self.process.pid}/root") / data_dir.relative_to("/")  # as everyone else reaches it
        self._filler = self.inside / "filler"

    @staticmethod
    @functools.cache
    def unavailable() -> str | None:
        """Why no tmpfs can be mounted in a private mount namespace here (None: it can)."""
        if os.geteuid() != 0:
            return "needs root, to mount a small tmpfs in a private mount namespace"
        if shutil.which("unshare") is None or shutil.which("mount") is None:
            return "needs unshare and mount (util-linux)"
        with tempfile.TemporaryDirectory(prefix="kvmgr-tmpfs-") as scratch:
            mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", scratch]
            probe = subprocess.run(["unshare", "--mount", "--propagation", "private", *mount], capture_output=True, text=True, timeout=10)
        return None if probe.returncode == 0 else f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}"

    def next_server(self) -> ServerProcess:
        """The next server, once it listens."""
        text = wait_until_ready(self.process, READY_PREFIX, "kvmgr server on a tmpfs")
        return ServerProcess(self.process, parse_address(text), text, self.authkey)

    def fill(self) -> None:
        """Fill the tmpfs to the last page."""
        descriptor = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (bytes(1 << 20), bytes(4096)):
                try:
                    while True:
                        os.write(descriptor, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(descriptor)

    def free(self) -> None:
        """Give the space back."""
        os.remove(self._filler)

    def log_lines(self) -> list[str]:
        """What the servers wrote to stderr (once they have exited)."""
        self.process.wait(timeout=PROGRESS_TIMEOUT)
        return list(self.process.stderr.read().decode(errors="replace").splitlines())


def batch_commit_failure(writers: int = 4, writes: int = 30) -> FaultResult:
    """Honest writers while group commits fail on a full disk, then go on once space is freed (root only).

    A write that failed must be gone at once and after a restart; every acknowledged write must stay.
    """
    reason = TmpfsServer.unavailable()
    if reason is not None:
        return FaultResult(f"batch commit failure: skipped ({reason})")
    result = FaultResult("batch commit failure (a full tmpfs under --fsync batch)", rounds=1)
    acknowledged: dict[str, str] = {}
    refused: list[str] = []
    wrong: list[str] = []
    errors: list[str] = []
    slowest = [0.0]
    stop = threading.Event()

    def write(client: Any, name: str) -> None:
        number = 0
        while not stop.is_set() and not errors:
            number += 1
            key = value = f"{name}-{number}"
            started = time.monotonic()
            try:
                client.store(key, value)
                acknowledged[key] = value
            except KvmgrError as exc:
                if not str(exc).startswith("durable storage failed"):
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
                refused.append(key)
            slowest[0] = max(slowest[0], time.monotonic() - started)
            if client.get_many([key]).get(key) != acknowledged.get(key):  # a refused write is gone at once
                wrong.append(key)

    def until(enough: Callable[[], bool], what: str) -> bool:
        """Wait for enough(); False, with a note, if an honest client failed or the deadline came first."""
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while not enough():
            if errors or time.monotonic() > deadline:
                result.notes.append(errors[0] if errors else f"{what} within {PROGRESS_TIMEOUT:g}s")
                return False
            time.sleep(0.005)
        return True

    with tempfile.TemporaryDirectory(prefix="kvmgr-faults-") as scratch, ProcessGroup() as group:
        disk = TmpfsServer(group, Path(scratch) / "data", "batch")
        server = disk.next_server()
        clients = [kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=5.0) for _ in range(writers)]
        threads = [threading.Thread(target=write, args=(client, f"w{n}")) for n, client in enumerate(clients)]
        for thread in threads:
            thread.start()
        try:
            if until(lambda: len(acknowledged) >= writes, "no writes were acknowledged"):
                disk.fill()
                try:
                    filled = until(lambda: len(refused) >= writes, "no write failed on the full disk")
                finally:
                    disk.free()
                recovered_from = len(acknowledged)
                if filled:
                    until(lambda: len(acknowledged) >= recovered_from + writes, "writes did not recover once space was freed")
        finally:
            stop.set()
            for thread in threads:
                thread.join(PROGRESS_TIMEOUT)
        clients[0].quit()
        again = disk.next_server()
        with kvmgr.connect(again.address_text, authkey=again.authkey.encode()) as client:
            present = client.get_many([*acknowledged, *refused])
            client.quit()
        for client in clients:
            client.close()
    result.acknowledged, result.honest_errors, result.worst_latency_ms = len(acknowledged), len(errors), slowest[0] * 1000
    result.lost = sum(present.get(key) != value for key, value in acknowledged.items())
    result.wrong_answers = len(wrong) + sum(key in present for key in refused)
    result.scenario += f": {len(refused)} writes refused"
    return result


def _bounded_map(pool: Any, task: Callable[[int], Any], items: range, result: FaultResult) -> list[Any]:
    """pool.map with a time limit: a worker that dies mid-task would otherwise leave map waiting forever."""
    try:
        return list(pool.map_async(task, items, chunksize=2).get(timeout=PROGRESS_TIMEOUT))
    except multiprocessing.TimeoutError:
        result.notes.append(f"the Pool gave no answer within {PROGRESS_TIMEOUT:g}s")
        return []


# --- the failover audit: writers under stress while a Redis primary is killed (kvmgr faults --target redis+sentinel://) ---

SHARED_KEYS = 8  # keys every audit writer also reads and overwrites, so the checker sees reads across the failover
AFTER_FAILOVER_ACKS = 20  # writes each writer gets acknowledged after the promotion before the round ends
AUDIT_TIMEOUT = 5.0  # the audit writers' client timeout: a call during the failover waits this long for a new primary
AUDIT_HEADERS = ("deployment", "durability", "rounds", "acknowledged writes", "acknowledged writes lost", "unknown outcomes",
                 "checker: linearizable rounds", "failover seconds (median, max)", "note")


@dataclass
class AuditResult:
    """One row of the failover audit: a deployment and durability, over its rounds."""

    deployment: str
    durability: str
    rounds: int = 0
    acknowledged: int = 0
    lost: int = 0
    unknown: int = 0
    linearizable_rounds: int = 0
    failover_seconds: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list:
        """The row as table cells."""
        times = sorted(self.failover_seconds) or [0.0]
        return [self.deployment, self.durability, self.rounds, self.acknowledged, self.lost, self.unknown,
                f"{self.linearizable_rounds}/{self.rounds}", f"{times[len(times) // 2]:.1f}, {times[-1]:.1f}", *self.notes[:1]]


def failover_writer_main(argv: list[str]) -> int:
    """One audit writer: store unique keys, and read and overwrite shared ones, until the stop file appears; every
    call (acknowledged, failed or of unknown outcome) goes to its history. Errors do not stop it: it writes through the failover."""
    parser = argparse.ArgumentParser(prog="python -m kvmgr.tools.faults --failover-writer")
    parser.add_argument("--failover-writer", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--history", required=True)
    parser.add_argument("--stop", required=True)
    args = parser.parse_args(argv)
    name, stop, chooser = args.failover_writer, Path(args.stop), random.Random(args.failover_writer)
    deadline = time.monotonic() + PROGRESS_TIMEOUT
    while True:  # the deployment may still be settling after the last round's restart
        try:
            client = kvmgr.connect(args.address, timeout=AUDIT_TIMEOUT, name=name, retry=NO_RETRY, namespace=args.namespace)
            break
        except ServerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with HistoryWriter(args.history) as history, with_history(client, history) as client:
        number = 0
        while not stop.exists():
            number += 1
            shared = f"shared-{chooser.randrange(SHARED_KEYS)}"
            try:
                client.store(f"{name}-{number}", number)
                client.get(shared)
            except KeyNotFound:
                pass
            except KvmgrError:
                time.sleep(0.01)
            with contextlib.suppress(KvmgrError):
                client.store(shared, f"{name}-{number}")
    return 0


def failover_audit(deployment: Any, replicated: bool, rounds: int, label: str) -> AuditResult:
    """Rounds of: WRITERS writers, kill -9 the primary, writes go on through the promotion; then count the
    acknowledged writes that are gone, and check the whole history (writers and the final read) for linearizability.
    The killed node is started again as a replica after each round. `deployment` is a SentinelDeployment or a Cluster."""
    result = AuditResult(label, "replicated" if replicated else "primary (default)")
    url = deployment.url + ("?durability=replicated" if replicated else "")
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="kvmgr-audit-") as scratch:
            _audit_round(deployment, url, Path(scratch), result)
    return result


def _audit_round(deployment: Any, url: str, scratch: Path, result: AuditResult) -> None:
    from kvmgr.verify.check import CHECK_TIMEOUT, check_operations

    namespace, stop = f"audit-{os.getpid()}-{time.monotonic_ns()}", scratch / "stop"
    paths = [scratch / f"w{n}.jsonl" for n in range(WRITERS)]
    with ProcessGroup() as group:
        writers = [group.launch(python_module("kvmgr.tools.faults", "--failover-writer", f"w{n}", "--address", url, "--namespace",
                                              namespace, "--history", str(path), "--stop", str(stop)), capture=False)
                   for n, path in enumerate(paths)]
        try:
            _wait_for_acks(paths, ACKS_BEFORE_KILL)
            killed_at = time.monotonic()
            old = deployment.kill_primary()
            deployment.wait_for_new_primary(old)
            result.failover_seconds.append(time.monotonic() - killed_at)
            _wait_for_acks(paths, [_count_lines(path) + AFTER_FAILOVER_ACKS for path in paths])  # each writer, from where it is
        finally:
            stop.touch()
            for writer in writers:
                writer.wait(timeout=PROGRESS_TIMEOUT)
    deployment.restart(old)
    operations = [op for path in paths for op in read_history(path)]
    unique = {op.key: op.value for op in operations if op.op == "store" and op.status == "ok" and not op.key.startswith("shared-")}
    with HistoryWriter(scratch / "reader.jsonl") as history, kvmgr.connect(
        deployment.url, timeout=AUDIT_TIMEOUT * 2, name="reader", history=history, namespace=namespace,
    ) as reader:
        present = reader.get_many([*unique, *(f"shared-{n}" for n in range(SHARED_KEYS))])
    delete_run_namespace("kvmgr faults", deployment.url, namespace, AUDIT_TIMEOUT * 2)  # the deployment as it was found
    verdict = check_operations([*operations, *read_history(scratch / "reader.jsonl")], "empty", CHECK_TIMEOUT)
    result.rounds += 1
    result.acknowledged += sum(op.status == "ok" and op.op == "store" for op in operations)
    result.unknown += sum(op.status == "info" for op in operations)
    result.lost += sum(present.get(key) != value for key, value in unique.items())
    result.linearizable_rounds += verdict.linearizable is True
    if verdict.linearizable is False and not result.notes:
        result.notes.append(f"not linearizable at key {verdict.key!r}")


def audit_targets(target: str, rounds: int) -> list[Callable[[], AuditResult]]:
    """The audit rows for --target: a deployment of that kind, started for the audit, without and with durability=replicated."""
    from kvmgr.tools.redis_server import find_redis_server, start_cluster, start_sentinel_deployment

    kind = target.split("://", 1)[0]
    starters: dict[str, Callable[[ProcessGroup, Path], Any]] = {"redis+sentinel": start_sentinel_deployment, "redis+cluster": start_cluster}
    if kind not in starters or target.split("://", 1)[1:] not in ([], [""]):
        raise KvmgrError(f"--target {target!r}: the audit kills and restarts Redis nodes, so it runs on a deployment of its own; "
                         "give redis+sentinel:// or redis+cluster:// (no hosts)")
    if find_redis_server() is None:
        raise KvmgrError("the failover audit needs redis-server: apt-get install redis-server")
    label = "Sentinel (1 primary, 2 replicas)" if kind == "redis+sentinel" else "Cluster (3 primaries, 3 replicas)"

    def row(replicated: bool) -> AuditResult:
        with tempfile.TemporaryDirectory(prefix="kvmgr-audit-") as scratch, ProcessGroup() as group:
            return failover_audit(starters[kind](group, Path(scratch)), replicated, rounds, label)

    return [lambda: row(False), lambda: row(True)]


def command_audit(args: argparse.Namespace) -> int:
    """Run `kvmgr faults --target ...`: the failover audit table."""
    try:
        rows = audit_targets(args.target, 1 if args.quick else args.rounds)
    except KvmgrError as exc:
        print(f"kvmgr faults: {exc}", file=sys.stderr)
        return 2
    results = []
    for row in rows:
        print(f"faults: failover audit on {args.target} ...", file=sys.stderr, flush=True)
        results.append(row())
    if args.json:
        print(json.dumps([asdict(result) for result in results], indent=2))
    else:
        print(tabulate([result.cells() for result in results], headers=AUDIT_HEADERS))
    return 0


def scenarios(quick: bool, rounds: int) -> list[tuple[str, Callable[[], FaultResult]]]:
    """Every fault scenario, named; quick runs one round of the kill -9 rounds."""
    kill_rounds = 1 if quick else rounds
    chosen = [
        ("kill-always", lambda: kill_server_under_writers("always", kill_rounds)),
        ("kill-batch", lambda: kill_server_under_writers("batch", kill_rounds)),
        ("kill-client", kill_client_mid_call),
        *((f"hostile-{name}", lambda name=name: hostile_peer(name)) for name in HOSTILE_PEERS),
        ("dead-server", dead_server_fails_fast),
        ("reconnect", reconnect_after_restart),
        ("interrupted-call", interrupted_calls),
        ("shared-by-threads", shared_by_threads),
        ("inherited-by-fork", inherited_by_fork),
        ("batch-commit-failure", batch_commit_failure),
    ]
    return chosen


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `kvmgr faults`."""
    parser = subparsers.add_parser(
        "faults", help="run the fault suite against real server processes",
        description=__doc__.split("\n")[0],
        epilog="Exit status: 0 nothing lost and no honest client failed, 1 otherwise.",
    )
    parser.add_argument("--rounds", type=positive_int, default=5, help="rounds of each kill -9 scenario (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="one round of each kill -9 scenario")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--target", metavar="redis+sentinel:// | redis+cluster://",
                        help="instead of the fault suite, the failover audit: start that kind of Redis deployment, run "
                             f"{WRITERS} writers, kill -9 a primary each round, count lost acknowledged writes, check the history")
    parser.set_defaults(handler=command_faults)


def command_faults(args: argparse.Namespace) -> int:
    """Run `kvmgr faults`."""
    if args.target is not None:
        return command_audit(args)
    results = []
    for name, scenario in scenarios(args.quick, args.rounds):
        print(f"faults: {name} ...", file=sys.stderr, flush=True)
        results.append(scenario())
    if args.json:
        print(json.dumps([dict(asdict(r), passed=r.passed) for r in results], indent=2))
    else:
        print(tabulate([r.cells() for r in results], headers=HEADERS))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit((failover_writer_main if "--failover-writer" in sys.argv else writer_main)(sys.argv[1:]))
