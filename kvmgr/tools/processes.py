"""The one helper for launching and reaping processes: servers, actors and stress workers.

Every process goes into a ProcessGroup, and leaving the group's `with` block reaps all of them on every
exit path (normal return, exception, Ctrl-C): terminate, wait, then kill whatever is still alive.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

import psutil

from kvmgr.config import AUTHKEY_ENV, Address, fresh_authkey, parse_address
from kvmgr.errors import ServerUnavailable
from kvmgr.tools.interrupts import interrupt_on_terminate

__all__ = ["interrupt_on_terminate"]  # processes' users import it from here too

READY_PREFIX = "kvmgr listening on "
READY_TIMEOUT = 15.0
REAP_TIMEOUT = 3.0


def python_module(module: str, *args: str) -> list[str]:
    """argv that runs `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_environment(authkey: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus the authkey for a child (never on its command line)."""
    env = dict(os.environ)
    if authkey is not None:
        env[AUTHKEY_ENV] = authkey
    env.update(extra or {})
    return env


def reap(process: psutil.Popen | psutil.Process, timeout: float = REAP_TIMEOUT) -> None:
    """Terminate a process and its descendants, wait for them, kill any that linger."""
    try:
        family = [*process.children(recursive=True), process]
    except psutil.NoSuchProcess:
        family = [process]
    for member in family:
        _signal(member, "terminate")
        _signal(member, "resume")  # a stopped (SIGSTOPped) process acts on SIGTERM only once continued
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for member in alive:
        _signal(member, "kill")
    psutil.wait_procs(alive, timeout=timeout)
    if isinstance(process, psutil.Popen):
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # e.g. a broken pipe: unsent input to a process that died
                    stream.close()


def _signal(process: psutil.Process, how: str) -> None:
    with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
        getattr(process, how)()


def suspend(process: psutil.Process, timeout: float = 5.0) -> None:
    """SIGSTOP a process and return once the kernel reports it stopped (the signal is asynchronous)."""
    process.suspend()
    deadline = time.monotonic() + timeout
    while process.status() != psutil.STATUS_STOPPED:
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"process {process.pid} did not stop within {timeout:g}s of SIGSTOP")
        time.sleep(0.005)


def read_line(process: psutil.Popen, deadline: float) -> str | None:
    """One line of the process's stdout before the deadline (or already written when it passed), or None."""
    fd = process.stdout.fileno()
    line = b""
    while not line.endswith(b"\n"):
        remaining = max(0.0, deadline - time.monotonic())
        if not select.select([fd], [], [], remaining)[0]:
            return None
        byte = os.read(fd, 1)
        if not byte:
            return None
        line += byte
    return line.decode().rstrip("\n")


def wait_until_ready(process: psutil.Popen, prefix: str, what: str, timeout: float = READY_TIMEOUT) -> str:
    """Wait for the process's ready line (`prefix` + details) and return the details; ServerUnavailable if none comes."""
    line = read_line(process, time.monotonic() + timeout)
    if line is None or not line.startswith(prefix):
        with contextlib.suppress(psutil.TimeoutExpired):
            process.wait(0.2)  # its output ended: it has likely just exited, so say so rather than "no ready line"
        status = process.poll()
        reason = f"exited with status {status}" if status is not None else f"no ready line within {timeout:g}s"
        raise ServerUnavailable(f"{what} did not start: {reason}")
    return line.removeprefix(prefix)


@dataclass
class ServerProcess:
    """A kvmgr server this process started: its process handle, address and authkey."""

    process: psutil.Popen
    address: Address
    address_text: str
    authkey: str


class ProcessGroup:
    """Processes launched together and reaped together."""

    def __init__(self) -> None:
        self.processes: list[psutil.Popen] = []

    def launch(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, *, capture: bool = True, stdin: bool = False,
    ) -> psutil.Popen:
        """Start a process (stdout and stderr piped when capture, stdin piped when asked) and track it."""
        pipe = subprocess.PIPE if capture else None
        stdin_pipe = subprocess.PIPE if stdin else subprocess.DEVNULL
        process = psutil.Popen(list(argv), env=dict(env) if env else None, stdin=stdin_pipe, stdout=pipe, stderr=pipe)
        self.processes.append(process)
        return process

    def start_server(
        self, address: str = "127.0.0.1:0", authkey: str | None = None, extra_args: Sequence[str] = (), log: IO | None = None,
    ) -> ServerProcess:
        """Start `kvmgr serve` with the authkey in its environment and wait for its ready line; its stderr goes to log."""
        key = authkey or fresh_authkey()
        argv = python_module("kvmgr", "serve", "--address", address, *extra_args)
        process = psutil.Popen(argv, env=child_environment(key), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        self.processes.append(process)
        text = wait_until_ready(process, READY_PREFIX, f"kvmgr server on {address}")
        process.stdout.close()
        return ServerProcess(process, parse_address(text), text, key)

    def reap_all(self) -> None:
        """Reap every process of the group, newest first; one that fails to go never stops the rest being reaped."""
        pending, self.processes = list(reversed(self.processes)), []
        first_error: BaseException | None = None
        for process in pending:
            try:
                reap(process)
            except BaseException as exc:  # even Ctrl-C: reap the others (the server last), then raise it
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.reap_all()
