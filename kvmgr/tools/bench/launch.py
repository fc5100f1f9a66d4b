"""Starting servers and client processes for a run (always through a ProcessGroup) and collecting what the
clients wrote."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import psutil

from kvmgr.config import fresh_authkey
from kvmgr.tools.bench.common import GO_DELAY, HOLDER_CONNECTIONS, READY_TIMEOUT, BenchError, Target, WorkerSpec
from kvmgr.tools.processes import ProcessGroup, child_environment, python_module, read_line, reap, wait_until_ready


def start_peer_server(group: ProcessGroup, role: str, address: str) -> tuple[psutil.Popen, str, str]:
    """Start a stdlib, floor or selectors-floor server process and wait for its ready line; return it, its address and key."""
    authkey = fresh_authkey()
    process = group.launch(python_module("kvmgr.tools.bench", "--serve", role, "--address", address), child_environment(authkey))
    return process, wait_until_ready(process, "ready ", f"the {role} server on {address}"), authkey


def failure_text(process: psutil.Popen) -> str:
    """Why a process failed: its exit status and the end of its stderr, or that it is still running."""
    try:
        status = process.wait(timeout=1.0)
    except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
        status = None
    if status is None:
        return "no answer in time"
    error = process.stderr.read().decode(errors="replace") if process.stderr else ""
    return f"exit status {status}: {last_line(error)}"


def last_line(text: str) -> str:
    """The last non-blank line of a process's stderr (the exception of a traceback)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no error output)"


def load_redis() -> tuple[Any, str]:
    """The kvmgr.tools.redis_server module when redis-server and redis-py are both there, else None and why not."""
    try:
        from kvmgr.tools import redis_server
    except ImportError:
        return None, "kvmgr.tools.redis_server is not available"
    if importlib.util.find_spec("redis") is None:
        return None, "redis-py is not installed (pip install 'kvmgr[redis]')"
    if redis_server.find_redis_server() is None:
        return None, "no redis-server executable found"
    return redis_server, ""


def start_targets(group: ProcessGroup, workdir: Path, redis_module: Any) -> list[Target]:
    """Start one server per system and transport; return the targets the workloads run against."""
    targets = []
    for transport, address in (("tcp", "127.0.0.1:0"), ("unix", str(workdir / "kvmgr.sock"))):
        server = group.start_server(address)
        pid = server.process.pid
        targets.append(Target("kvmgr", transport, "kvmgr", server.address_text, server.authkey, pid))
        targets.append(Target("kvmgr-pipelined", transport, "kvmgr-pipelined", server.address_text, server.authkey, pid))
    for system, role in (("multiprocessing-dict", "stdlib"), ("connection-floor", "floor"), ("selectors-floor", "selectors-floor")):
        for transport, address in (("tcp", "127.0.0.1:0"), ("unix", str(workdir / f"{role}.sock"))):
            process, actual, authkey = start_peer_server(group, role, address)
            targets.append(Target(system, transport, role, actual, authkey, process.pid))
    if redis_module is not None:
        started = redis_module.start_redis_server(group)
        pid = started.process.pid
        targets += [Target("redis", "tcp", "redis", started.url, server_pid=pid),
                    Target("redis-pipelined", "tcp", "redis-pipelined", started.url, server_pid=pid)]
    return targets


def start_holders(group: ProcessGroup, target: Target, connections: int) -> list[psutil.Popen]:
    """Processes that between them hold `connections` idle authenticated kvmgr connections, each after one call."""
    holders: list[psutil.Popen] = []
    try:
        for first in range(0, connections, HOLDER_CONNECTIONS):
            count = min(HOLDER_CONNECTIONS, connections - first)
            holders.append(group.launch(python_module("kvmgr.tools.bench", "--hold", str(count)), target.environment(), stdin=True))
        for holder in holders:
            wait_until_ready(holder, "holding ", f"a holder of idle connections to {target.address}", READY_TIMEOUT)
    except BaseException:
        for holder in holders:
            reap(holder)
        raise
    return holders


def established_connections(server: psutil.Process) -> int:
    """How many established TCP connections the server process has open."""
    return sum(1 for conn in server.net_connections(kind="tcp") if conn.status == psutil.CONN_ESTABLISHED)


def run_clients(
    group: ProcessGroup, target: Target, spec: WorkerSpec, clients: int, phase_timeout: float,
    on_boundary: Callable[[], None] | None = None,
) -> list[list[dict]]:
    """Run `clients` worker processes through spec's workloads, one phase each; return each one's per-workload outputs.

    Every phase starts in all clients together when its go file appears, and the next go file is written only once
    every client has said done, so at each boundary no client is working. on_boundary, if given, is called there:
    before the first phase and after each one.
    """
    env = target.environment()
    workers = []
    where = f"{target.system}/{target.transport}"
    try:
        outputs = [Path(spec.go_file).with_name(f"{Path(spec.go_file).name}-client{index}.jsonl") for index in range(clients)]
        for index in range(clients):
            worker_spec = replace(spec, seed=index, preload=spec.preload and index == 0, output=str(outputs[index]))
            workers.append(group.launch(python_module("kvmgr.tools.bench", "--worker", json.dumps(asdict(worker_spec))), env))
        await_line(workers, "ready", READY_TIMEOUT, f"a {where} client did not get ready")
        for phase, workload in enumerate(spec.workloads):
            if on_boundary is not None:
                on_boundary()
            write_go_file(spec.go_file_of(phase), time.time() + GO_DELAY)
            await_line(workers, "done", GO_DELAY + phase_timeout, f"a {where} client did not finish its {workload} phase")
        if on_boundary is not None:
            on_boundary()
        return [finished_output(worker, READY_TIMEOUT, output) for worker, output in zip(workers, outputs, strict=True)]
    finally:
        for worker in workers:
            reap(worker)
        for phase in range(len(spec.workloads)):
            spec.go_file_of(phase).unlink(missing_ok=True)


def await_line(workers: list[psutil.Popen], expected: str, timeout: float, failure: str) -> None:
    """Wait until every worker has printed the line `expected` (within timeout seconds); BenchError saying why one did not."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        if read_line(worker, deadline) != expected:
            raise BenchError(f"{failure}: {failure_text(worker)}")


def write_go_file(path: Path, start_at: float) -> None:
    """Publish the start time atomically: clients see either no file or the whole of it."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(repr(start_at))
    temporary.replace(path)


def finished_output(worker: psutil.Popen, timeout: float, output: Path) -> list[dict]:
    """The JSON lines a worker wrote to its output file, once it has exited successfully."""
    try:
        _, err = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"a client did not finish within {timeout:g}s") from exc
    if worker.returncode != 0:
        raise BenchError(f"a client failed with exit status {worker.returncode}: {last_line(err.decode(errors='replace'))}")
    lines = output.read_text(encoding="utf-8").splitlines()
    output.unlink()
    return [json.loads(line) for line in lines if line.strip()]
