"""kvmgr stress: many client processes run random operations as fast as they can; the history is checked.

`python -m kvmgr.tools.stress --worker ...` is one such client process (started by the stress command).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from kvmgr.config import client_authkey, is_redis_url
from kvmgr.errors import ConfigError, KeyNotFound, KvmgrError, ServerUnavailable
from kvmgr.protocol.operations import OPERATIONS
from kvmgr.tools.arguments import positive_float, positive_int, writable_path
from kvmgr.tools.cleanup import delete_run_namespace
from kvmgr.tools.processes import ProcessGroup, python_module
from kvmgr.verify.check import CHECK_TIMEOUT, CheckProgress, CheckResult, check_operations, describe
from kvmgr.verify.history import HistoryWriter, Operation, merge_histories, read_history

DEFAULT_MIX = "store=40,get=40,cas=10,delete=10"
COUNTING = ("incr", "decr")  # these work on counter keys of their own (a str value there would make them WrongType)
BATCH_SIZE = 4
PROGRESS_EVERY = 2.0
WORKER_TIMEOUT = 600.0
MAX_WEIGHT_DIGITS = 9


def parse_mix(text: str) -> dict[str, int]:
    """'store=40,get=40' -> {'store': 40, 'get': 40}; ConfigError naming what is wrong."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or name not in MIX_OPERATIONS or not re.fullmatch(f"[0-9]{{1,{MAX_WEIGHT_DIGITS}}}", weight):
            raise ConfigError(
                f"bad --mix entry {part.strip()[:40]!r}: expected OP=WEIGHT with OP one of {', '.join(MIX_OPERATIONS)} "
                f"and WEIGHT a whole number (digits 0-9, at most {MAX_WEIGHT_DIGITS})"
            )
        mix[name] = int(weight)
    if not any(mix.values()):
        raise ConfigError("--mix needs at least one operation with a weight above 0")
    return mix


class Worker:
    """One client process's random workload: unique values per write, cas against values it has seen.

    Keys are `PREFIX k INDEX` for an index below key_count, made when drawn: the key list is never built.
    incr and decr count on keys of their own, `PREFIX n INDEX`, which nothing writes a str to; get, pop and
    delete draw from both kinds when the mix counts (so a pop can take a counter away mid-count).
    """

    def __init__(self, name: str, client: Any, key_count: int, prefix: str, mix: dict[str, int], seed: int) -> None:
        self.name = name
        self.client = client
        self.key_count = key_count
        self.prefix = prefix
        self.operations = list(mix)
        self.weights = list(mix.values())
        self.counts = any(mix.get(name) for name in COUNTING)
        self.random = random.Random(seed)
        self.seen: dict[str, Any] = {}
        self.counter = 0
        self.errors: dict[str, int] = {}
        self.stopped: str | None = None  # why the run ended early: the server stopped answering

    def run(self, count: int) -> None:
        """Run `count` operations; expected outcomes (a missing key) are not errors. Stop once the server does not answer."""
        for _ in range(count):
            operation = self.random.choices(self.operations, self.weights)[0]
            try:
                getattr(self, f"do_{operation}")()
            except KeyNotFound:
                pass
            except KvmgrError as exc:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
                if isinstance(exc, ServerUnavailable):  # a hung server would cost a timeout per remaining call
                    self.stopped = f"{type(exc).__name__}: {exc}"
                    return

    def value(self) -> str:
        """A value never written before."""
        self.counter += 1
        return f"{self.name}-{self.counter}"

    def key(self) -> str:
        """A random key of those that hold values."""
        return f"{self.prefix}k{self.random.randrange(self.key_count)}"

    def counter_key(self) -> str:
        """A random key of those that incr and decr count on."""
        return f"{self.prefix}n{self.random.randrange(self.key_count)}"

    def any_key(self) -> str:
        """A random key to read or remove: a counter's half the time when the mix counts."""
        return self.counter_key() if self.counts and self.random.random() < 0.5 else self.key()

    def some_keys(self) -> list[str]:
        """BATCH_SIZE distinct random keys (fewer if there are fewer keys)."""
        indexes = self.random.sample(range(self.key_count), min(BATCH_SIZE, self.key_count))
        return [f"{self.prefix}k{index}" for index in indexes]

    def do_store(self) -> None:
        key, value = self.key(), self.value()
        self.client.store(key, value)
        self.seen[key] = value

    def do_get(self) -> None:
        key = self.any_key()
        self.seen[key] = self.client.get(key)

    def do_delete(self) -> None:
        self.client.delete(self.any_key())

    def do_incr(self) -> None:
        self.client.incr(self.counter_key(), self.random.choice((1, 2, 5)))

    def do_decr(self) -> None:
        self.client.decr(self.counter_key(), self.random.choice((1, 3)))

    def do_add(self) -> None:
        key, value = self.key(), self.value()
        if self.client.add(key, value):
            self.seen[key] = value

    def do_pop(self) -> None:
        self.client.pop(self.any_key(), None)

    def do_cas(self) -> None:
        key, value = self.key(), self.value()
        expected = self.seen.get(key) if self.random.random() < 0.8 else None
        if self.client.cas(key, expected, value):
            self.seen[key] = value

    def do_get_many(self) -> None:
        self.seen.update(self.client.get_many(self.some_keys()))

    def do_store_many(self) -> None:
        pairs = {key: self.value() for key in self.some_keys()}
        self.client.store_many(pairs)
        self.seen.update(pairs)


MIX_OPERATIONS = tuple(spec.name for spec in OPERATIONS if spec.recorded_as and hasattr(Worker, f"do_{spec.name}"))
"""What the workers know how to run and record: store, get, delete, cas, get_many, store_many, incr, decr, add, pop."""


def worker_main(argv: list[str]) -> int:
    """Entry point of one stress client process (authkey from --authkey-file, for Redis none)."""
    from kvmgr import connect

    parser = argparse.ArgumentParser(prog="python -m kvmgr.tools.stress --worker")
    parser.add_argument("--worker", required=True)
    for option in ("--target", "--history", "--mix", "--namespace"):
        parser.add_argument(option, required=True)
    for option in ("--ops", "--keys", "--seed", "--parties"):
        parser.add_argument(option, type=int, required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--authkey-file", type=Path)
    args = parser.parse_args(argv)
    with HistoryWriter(args.history) as history, connect(
        args.target, timeout=args.timeout, name=args.worker, authkey_file=args.authkey_file, history=history,
        namespace=args.namespace,
    ) as client:
        client.rendezvous("start", args.parties, timeout=60)  # this run's own barrier, in its namespace
        worker = Worker(args.worker, client, args.keys, "", parse_mix(args.mix), args.seed)
        worker.run(args.ops)
    print(json.dumps({"client": args.worker, "errors": worker.errors, "stopped": worker.stopped}), flush=True)
    return 0


@dataclass
class StressReport:
    """What a stress run did and whether its history is linearizable."""

    clients: int
    operations: list[Operation]
    seconds: float
    check: CheckResult
    worker_errors: dict[str, int] = field(default_factory=dict)
    failed_workers: list[str] = field(default_factory=list)

    @property
    def unexpected(self) -> int:
        """Calls that raised (other than a missing key) or left a failed or unknown outcome, and clients that crashed."""
        not_ok = sum(op.status != "ok" for op in self.operations)
        return max(not_ok, sum(self.worker_errors.values())) + len(self.failed_workers)

    @property
    def passed(self) -> bool:
        """Linearizable (not just unknown) and nothing unexpected failed."""
        return self.check.linearizable is True and self.unexpected == 0

    def rows(self) -> list[dict[str, Any]]:
        """Per operation type: count, errors, throughput and latency percentiles (µs)."""
        rows = []
        for name in sorted({op.op for op in self.operations}):
            ops = [op for op in self.operations if op.op == name]
            latencies = sorted((op.end - op.start) / 1000 for op in ops if op.status == "ok" and op.end is not None)
            rows.append({
                "operation": name, "count": len(ops), "errors": sum(op.status != "ok" for op in ops),
                "ops_per_s": round(len(ops) / self.seconds, 1) if self.seconds else 0.0,
                "p50_us": _percentile(latencies, 50), "p99_us": _percentile(latencies, 99),
                "max_us": round(latencies[-1], 1) if latencies else None,
            })
        return rows

    def table(self) -> str:
        """The results table and the verdict."""
        rows = self.rows()
        total = {"operation": "all", "count": len(self.operations), "errors": self.unexpected,
                 "ops_per_s": round(len(self.operations) / self.seconds, 1) if self.seconds else 0.0}
        body = tabulate([*rows, total], headers="keys")
        lines = [body, f"clients: {self.clients}   seconds: {self.seconds:.2f}   linearizable: {self.check.verdict}"]
        if not self.check.linearizable:
            lines.append(describe(self.check))
        elif self.check.skipped_keys:
            lines.append(self.check.skipped_note)
        return "\n".join(lines)

    def to_json(self) -> str:
        """The machine-readable report."""
        return json.dumps({
            "clients": self.clients, "operations": len(self.operations), "seconds": round(self.seconds, 3),
            "errors": self.unexpected, "linearizable": self.check.linearizable, "verdict": self.check.verdict,
            "check_detail": self.check.detail, "passed": self.passed, "by_operation": self.rows(),
            "first_bad_key": self.check.key if self.check.linearizable is False else None,
            "skipped_keys": self.check.skipped_keys,
        }, indent=2)


def _percentile(sorted_values: list[float], percent: int) -> float | None:
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return round(sorted_values[0], 1)
    return round(statistics.quantiles(sorted_values, n=100, method="inclusive")[percent - 1], 1)


@dataclass
class StressPlan:
    """What to run: how many clients, operations each, keys, the mix and the seed."""

    clients: int
    ops: int
    keys: int
    mix: str = DEFAULT_MIX
    seed: int = 0
    timeout: float = 5.0
    check_timeout: float = CHECK_TIMEOUT


def run_stress(plan: StressPlan, target: str | None, authkey: bytes | None, history_path: Path | None) -> StressReport:
    """Start a server unless a target is given, run the workers, merge and check their histories.

    Every run has a namespace of its own for its keys and its start barrier, so runs sharing a server never collide
    (every key starts absent); on a target, the run deletes its namespace when it ends, however it ends (Ctrl-C too).
    """
    parse_mix(plan.mix)
    if target is not None:
        _check_reachable(target, authkey, plan.timeout)
    with ProcessGroup() as group, tempfile.TemporaryDirectory(prefix="kvmgr-stress-") as scratch:
        if target is None:
            server = group.start_server()
            target, authkey = server.address_text, server.authkey.encode()
        key_file = _private_file(Path(scratch) / "authkey", authkey) if authkey is not None else None
        paths = [Path(scratch) / f"c{n}.jsonl" for n in range(plan.clients)]
        started = time.monotonic()
        namespace = f"stress-{uuid.uuid4().hex[:12]}"  # keys no earlier run touched: every key starts absent
        try:
            workers = [group.launch(_worker_argv(plan, n, target, path, namespace, key_file)) for n, path in enumerate(paths)]
            failed, errors = _wait_for_workers(workers, started)
        finally:
            group.reap_all()  # no worker writes once the namespace goes
            delete_run_namespace("stress", target, namespace, plan.timeout, authkey)
        merged = history_path or Path(scratch) / "history.jsonl"
        merge_histories([p for p in paths if p.exists()], merged)
        operations = read_history(merged)
    return StressReport(plan.clients, operations, busy_seconds(operations), _check_history(operations, plan.check_timeout), errors, failed)


def _check_history(operations: list[Operation], timeout: float) -> CheckResult:
    """Check the run's history (its keys start absent) within `timeout` seconds, with progress on stderr."""

    def show(progress: CheckProgress) -> None:
        print(f"stress: {progress.line()}", file=sys.stderr, flush=True)

    return check_operations(operations, initial="empty", timeout=timeout, progress=show)


def _check_reachable(target: str, authkey: bytes | None, timeout: float) -> None:
    """Fail with one clear line (ServerUnavailable, AuthenticationFailed) before spawning any client."""
    from kvmgr import connect

    with connect(target, authkey=authkey, timeout=timeout):
        pass


def _private_file(path: Path, content: bytes) -> Path:
    """Write content to a new file only this user can read (how workers get the authkey, whatever its bytes)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(content)
    return path


def busy_seconds(operations: list[Operation]) -> float:
    """From the first call sent to the last reply received (process start-up is not counted)."""
    if not operations:
        return 0.0
    last = max(op.end if op.end is not None else op.start for op in operations)
    return (last - min(op.start for op in operations)) / 1e9


def _worker_argv(plan: StressPlan, number: int, target: str, history: Path, namespace: str, key_file: Path | None) -> list[str]:
    return python_module(
        "kvmgr.tools.stress", "--worker", f"c{number}", "--target", target, "--history", str(history), "--mix", plan.mix,
        "--namespace", namespace,        "--ops", str(plan.ops), "--keys", str(plan.keys), "--seed", str(plan.seed * 1000 + number),
        "--parties", str(plan.clients), "--timeout", str(plan.timeout), *(["--authkey-file", str(key_file)] if key_file else []),
    )


def _wait_for_workers(workers: list, started: float) -> tuple[list[str], dict[str, int]]:
    failed: list[str] = []
    errors: dict[str, int] = {}
    pending = list(workers)
    last_progress = started
    while pending:
        process = pending[0]
        try:
            stdout, stderr = process.communicate(timeout=PROGRESS_EVERY)
        except subprocess.TimeoutExpired:
            if time.monotonic() - started > WORKER_TIMEOUT:
                raise KvmgrError(f"stress workers still running after {WORKER_TIMEOUT:g}s") from None
            if time.monotonic() - last_progress >= PROGRESS_EVERY:
                done = len(workers) - len(pending)
                print(f"stress: {done}/{len(workers)} clients finished, {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
                last_progress = time.monotonic()
            continue
        pending.pop(0)
        _collect_worker(process.returncode, stdout, stderr, failed, errors)
    return failed, errors


def _collect_worker(status: int, stdout: bytes, stderr: bytes, failed: list[str], errors: dict[str, int]) -> None:
    if status != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        failed.append(lines[-1] if lines else f"exit {status}")
        return
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    for name, count in report["errors"].items():
        errors[name] = errors.get(name, 0) + count
    if report.get("stopped"):
        failed.append(f"{report['client']} stopped early: {report['stopped']}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `kvmgr stress`."""
    parser = subparsers.add_parser(
        "stress", help="many client processes at once; check the history",
        description="Spawn N client processes that run M random operations each on K keys as fast as they can, "
        "record the history, check that it is linearizable and print throughput and latency per operation.",
        epilog="Exit status: 0 linearizable and no errors, 1 not linearizable, unknown (the check's time limit came first) "
        "or errors, 2 bad usage, 3 server unreachable.",
    )
    parser.add_argument("--clients", type=positive_int, default=4, help="client processes (default %(default)s)")
    parser.add_argument("--ops", type=positive_int, default=1000, help="operations per client (default %(default)s)")
    parser.add_argument("--keys", type=positive_int, default=8, help="distinct keys (default %(default)s)")
    default = parse_mix(DEFAULT_MIX)
    parser.add_argument(
        "--mix", default=DEFAULT_MIX,
        help=f"weights per operation (default {DEFAULT_MIX}); also {', '.join(n for n in MIX_OPERATIONS if n not in default)}",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument(
        "--history", type=writable_path, help="also write the merged history (JSON lines) here (checked before the run)",
    )
    parser.add_argument(
        "--address", "--target", dest="target",
        help="use this running kvmgr server, or a redis:// URL, instead of starting a server",
    )
    parser.add_argument("--authkey-file", type=Path, help="authkey for --address (else $KVMGR_AUTHKEY or the default key file)")
    parser.add_argument("--timeout", type=positive_float, default=5.0, help="per-call timeout in seconds (default %(default)s)")
    parser.add_argument(
        "--check-timeout", type=positive_float, default=CHECK_TIMEOUT, metavar="SECONDS",
        help="stop checking the history after this long; the verdict is then unknown and the run fails (default %(default)g)",
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable report")
    parser.set_defaults(handler=command_stress)


def command_stress(args: argparse.Namespace) -> int:
    """Run `kvmgr stress`."""
    authkey = None
    if args.target is not None and not is_redis_url(args.target):
        authkey = client_authkey(args.authkey_file)
    plan = StressPlan(args.clients, args.ops, args.keys, args.mix, args.seed, args.timeout, args.check_timeout)
    report = run_stress(plan, args.target, authkey, args.history)
    print(report.to_json() if args.json else report.table())
    for failure in report.failed_workers:
        print(f"kvmgr stress: a client failed: {failure}", file=sys.stderr)
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
