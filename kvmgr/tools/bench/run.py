"""The measurements (each returns Samples) and the run: every system once per workload per repeat, in an order
rotated every repeat."""

from __future__ import annotations

import functools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from kvmgr.errors import KvmgrError
from kvmgr.tools.bench.adapters import ADAPTERS
from kvmgr.tools.bench.common import (
    AIO_WORKLOAD,
    BULK_WORKLOADS,
    COORDINATION_KINDS,
    HANDOFF_CLIENTS,
    INCR_KINDS,
    INCR_WORKLOAD,
    LOCK_WORKLOAD,
    POINT_WORKLOADS,
    QUEUE_WORKLOAD,
    SECTIONS,
    STARTUP_WORKLOAD,
    BenchError,
    Profile,
    Sample,
    Target,
    WorkerSpec,
    progress,
)
from kvmgr.tools.bench.launch import established_connections, last_line, run_clients, start_holders, start_peer_server
from kvmgr.tools.bench.stats import combine, medians, percentile
from kvmgr.tools.processes import ProcessGroup, child_environment, python_module, reap

FINISH_MARGIN = 60.0
MEMORY_TIMEOUT = 600.0
AIO_TIMEOUT = 600.0
DRIVER_TIMEOUT = 120.0
STARTUP_TIMEOUT = 60.0
STARTUP_KEY, STARTUP_VALUE = "foo", "bar"  # what `alice --key=foo` reads in the startup row
BASELINE = "python -c pass"  # the startup rows' baseline command
RUN_DRIVER = Path(__file__).resolve().parents[3] / "run_driver.py"  # kvmgr/tools/bench/run.py -> the checkout


def cpu_clock(pid: int) -> Callable[[], float]:
    """A reader of the CPU seconds (user + system, every thread, exited ones too) a process has used so far.

    On Linux it reads the process's CPU-time clock (clock_getcpuclockid), in nanoseconds; elsewhere psutil's
    cpu_times, which count in clock ticks (10 ms), too coarse for short phases.
    """
    if sys.platform == "linux":
        return functools.partial(time.clock_gettime, (~pid << 3) | 2)  # the kernel's MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    process = psutil.Process(pid)
    return lambda: sum(process.cpu_times()[:2])


class ServerCpu:
    """The server process's CPU time at the boundaries of one client run's phases (read when no client is working):
    its CPU per operation in each phase."""

    def __init__(self, pid: int) -> None:
        self.read = cpu_clock(pid)
        self.read()  # a server that is gone fails here, before any client starts
        self.marks: list[float] = []

    def __call__(self) -> None:
        """Read the clock at a boundary: before the first phase, then after each one."""
        self.marks.append(self.read())

    def per_operation_us(self, outputs: list[list[dict]], index: int) -> float | None:
        """Server CPU µs per operation (or key) of phase `index`, over every client's operations."""
        operations: int = sum(per_client[index]["ops"] for per_client in outputs)
        if len(self.marks) <= index + 1 or not operations:
            return None
        return (self.marks[index + 1] - self.marks[index]) / operations * 1e6


@dataclass
class Bench:
    """Everything one run shares: the process group, its scratch directory, the profile and the targets."""

    group: ProcessGroup
    workdir: Path
    profile: Profile
    redis_module: Any
    targets: list[Target] = field(default_factory=list)
    counter: int = 0
    sections: tuple[str, ...] = SECTIONS  # the groups of rows measured (--only)

    def scratch(self, name: str) -> str:
        """A path in the scratch directory that no other use of the run shares."""
        self.counter += 1
        return str(self.workdir / f"{name}-{self.counter}")

    def spec(self, kind: str, workloads: Sequence[str], preload: bool = True) -> WorkerSpec:
        """A worker spec with a fresh go file."""
        sizes = self.profile
        go_file = self.scratch("go")
        return WorkerSpec(kind, list(workloads), sizes.duration, go_file, sizes.keyspace, sizes.bulk_keys, sizes.memory_keys, 0, preload)

    def phased(self, target: Target, workloads: Sequence[str], clients: int) -> list[Sample]:
        """Run the workloads back to back in `clients` processes; one Sample per workload."""
        return self.run_spec(target, self.spec(target.kind, workloads), clients)[1]

    def run_spec(self, target: Target, spec: WorkerSpec, clients: int) -> tuple[list[list[dict]], list[Sample]]:
        """Run spec's workloads in `clients` processes; every client's outputs, and one Sample per workload."""
        workloads = spec.workloads
        cpu = ServerCpu(target.server_pid) if target.server_pid else None
        outputs = run_clients(self.group, target, spec, clients, spec.duration + FINISH_MARGIN, cpu)
        samples = [combine(target.system, target.transport, workload, outputs, index) for index, workload in enumerate(workloads)]
        if cpu is not None:
            samples = [replace(sample, server_cpu_us=cpu.per_operation_us(outputs, index)) for index, sample in enumerate(samples)]
        return outputs, samples

    def incr(self, target: Target, clients: int, key: str | None = None) -> list[Sample]:
        """`clients` processes incrementing one key (by default a fresh one); the Sample's lost_updates says whether any was lost."""
        key = key or Path(self.scratch("counter")).name
        spec = replace(self.spec(target.kind, [INCR_WORKLOAD], preload=False), counter_key=key)
        outputs, [sample] = self.run_spec(target, spec, clients)
        increments = sum(per_client[0]["ops"] for per_client in outputs)
        return [replace(sample, lost_updates=increments - final_count(target, key))]

    def lock(self, target: Target, name: str | None = None) -> list[Sample]:
        """HANDOFF_CLIENTS processes taking a lock (by default a fresh one) in turns; lost_updates: acquisitions minus the
        count kept under it."""
        name = name or Path(self.scratch("lock")).name
        spec = replace(self.spec(target.kind, [LOCK_WORKLOAD], preload=False), counter_key=name)
        outputs, [sample] = self.run_spec(target, spec, HANDOFF_CLIENTS)
        acquisitions = sum(per_client[0]["acquisitions"] for per_client in outputs)
        handoffs = sum(per_client[0]["ops"] for per_client in outputs)
        final = final_record_count(target, f"{name}:record")
        return [replace(sample, lost_updates=acquisitions - final, handoff_share=handoffs / acquisitions)]

    def queue(self, target: Target, name: str | None = None) -> list[Sample]:
        """HANDOFF_CLIENTS processes passing numbered items through queues (by default fresh ones); misdelivered: items not
        received exactly once."""
        spec = replace(self.spec(target.kind, [QUEUE_WORKLOAD], preload=False), counter_key=name or Path(self.scratch("queue")).name)
        outputs, [sample] = self.run_spec(target, spec, HANDOFF_CLIENTS)
        sent = [number for per_client in outputs for number in per_client[0]["sent"]]
        received = [number for per_client in outputs for number in per_client[0]["received"]]
        return [replace(sample, misdelivered=misdelivered(sent, received))]

    def aio(self, target: Target) -> list[Sample]:
        """One process of rounds of concurrent gets through an asyncio client, keys fresh for the measurement;
        wrong_answers: answers that were not the task's own value."""
        profile = self.profile
        spec = replace(self.spec(target.kind, [AIO_WORKLOAD], preload=False), counter_key=Path(self.scratch("aio")).name,
                       aio_gets=profile.aio_gets, aio_rounds=profile.aio_rounds, aio_warmup=profile.aio_warmup)
        outputs = run_clients(self.group, target, spec, 1, AIO_TIMEOUT)
        sample = combine(target.system, target.transport, AIO_WORKLOAD, outputs, 0)
        return [replace(sample, wrong_answers=outputs[0][0]["wrong_answers"])]

    def startup(self, repeat: int) -> list[Sample]:
        """Wall time of `alice --key=foo` (on the kvmgr/tcp server), `kvmgr --help` and `python -c pass`, runs interleaved."""
        target = next(t for t in self.targets if (t.system, t.transport) == ("kvmgr", "tcp"))
        adapter = ADAPTERS["kvmgr"](target.address, target.authkey.encode())
        try:
            adapter.client.store(STARTUP_KEY, STARTUP_VALUE)
        finally:
            adapter.close()
        commands = startup_commands(target.address)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for run in range(self.profile.startup_runs):
            for name in rotated(list(commands), repeat + run):
                times[name].append(self.wall_time(name, commands[name], target.environment()))
        baseline = statistics.median(times[BASELINE])
        return [startup_sample(name, "tcp" if name.startswith("alice") else "none", sorted(seconds), baseline)
                for name, seconds in times.items()]

    def wall_time(self, name: str, argv: list[str], env: dict[str, str], timeout: float = STARTUP_TIMEOUT) -> float:
        """Seconds from launching argv to its exit, which must be status 0 (alice must print the value stored)."""
        started = time.perf_counter()
        process = self.group.launch(argv, env)
        try:
            out, err = process.communicate(timeout=timeout)
            seconds = time.perf_counter() - started
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{name} did not finish within {timeout:g}s") from exc
        finally:
            reap(process)
        if process.returncode != 0:
            raise BenchError(f"{name} failed with exit status {process.returncode}: {last_line(err.decode(errors='replace'))}")
        if name.startswith("alice") and STARTUP_VALUE not in out.decode(errors="replace"):
            raise BenchError(f"{name} printed {last_line(out.decode(errors='replace'))!r}, not the value {STARTUP_VALUE!r}")
        return seconds

    def idle(self) -> list[Sample]:
        """Single-client gets on a fresh kvmgr/tcp server, alternately without and with idle connections held; RSS growth."""
        server = self.group.start_server("127.0.0.1:0")
        target = Target("kvmgr", "tcp", "kvmgr", server.address_text, server.authkey, server.process.pid)
        free: list[Sample] = []
        held: list[Sample] = []
        baseline = 0
        try:
            for _ in range(self.profile.idle_rounds):
                free += self.phased(target, ["get"], 1)
                baseline = baseline or server.process.memory_info().rss  # warm, before any idle connection
                held.append(self.held_idle(target, server.process, baseline))
        finally:
            reap(server.process)
        return [replace(medians(held)[0], rss_growth_bytes=max(s.rss_growth_bytes or 0 for s in held),
                        idle_connections=min(s.idle_connections or 0 for s in held), idle_free_p50_us=medians(free)[0].p50_us)]

    def held_idle(self, target: Target, server: psutil.Process, baseline: int) -> Sample:
        """Single-client gets while holder processes keep the profile's idle connections open to the server."""
        holders = start_holders(self.group, target, self.profile.idle_connections)
        try:
            connections = established_connections(server)
            growth = server.memory_info().rss - baseline
            sample = self.phased(target, ["get"], 1)[0]
        finally:
            for holder in holders:
                reap(holder)
        return replace(sample, workload="idle", rss_growth_bytes=growth, idle_connections=connections)

    def memory(self, system: str) -> list[Sample]:
        """RSS growth of a fresh server of `system` (or of a bare Python process) while storing memory_keys keys."""
        target, server = self.fresh_server(system)
        try:
            before = server.memory_info().rss if server else 0
            outputs = run_clients(self.group, target, self.spec(target.kind, ["memory"], preload=False), 1, MEMORY_TIMEOUT)
            growth = server.memory_info().rss - before if server else outputs[0][0]["rss_growth_bytes"]
        finally:
            if server is not None:
                reap(server)
        return [replace(combine(target.system, target.transport, "memory", outputs, 0), rss_growth_bytes=growth)]

    def fresh_server(self, system: str) -> tuple[Target, psutil.Process | None]:
        """A new, empty server for a memory measurement (none for the bare dict)."""
        if system == "kvmgr":
            server = self.group.start_server(self.scratch("memory") + ".sock")
            return Target("kvmgr", "unix", "kvmgr", server.address_text, server.authkey), server.process
        if system == "multiprocessing-dict":
            process, address, authkey = start_peer_server(self.group, "stdlib", self.scratch("memory") + ".sock")
            return Target(system, "unix", "stdlib", address, authkey), process
        if system == "redis":
            started = self.redis_module.start_redis_server(self.group)
            return Target("redis", "tcp", "redis", started.url), psutil.Process(started.process.pid)
        return Target("python-dict", "in-process", "bare", ""), None

    def driver(self) -> list[Sample]:
        """Wall time of `python run_driver.py`, which must pass."""
        seconds = self.wall_time("run_driver.py", [sys.executable, str(RUN_DRIVER)], child_environment(None), DRIVER_TIMEOUT)
        return [Sample("kvmgr", "tcp", "driver", 1, 1 / seconds, seconds * 1e6, seconds * 1e6, "runs/s")]


def final_count(target: Target, key: str) -> int:
    """The counter's value on the target, read by a client of this process once every incrementing client has exited."""
    adapter = ADAPTERS[target.kind](target.address, target.authkey.encode())
    try:
        count = adapter.count(key)
    finally:
        adapter.close()
    if not isinstance(count, int) or isinstance(count, bool):
        raise BenchError(f"the counter {key!r} on {target.system}/{target.transport} holds {count!r}, not an int")
    return count


def final_record_count(target: Target, key: str) -> int:
    """The count in the lock row's record, read once every client has exited."""
    adapter = ADAPTERS[target.kind](target.address, target.authkey.encode())
    try:
        record = adapter.read_record(key)
    finally:
        adapter.close()
    if not isinstance(record, list | tuple) or len(record) != 3 or type(record[0]) is not int:
        raise BenchError(f"the lock record {key!r} on {target.system}/{target.transport} holds {record!r}, not (count, holder, stamp)")
    return record[0]


def misdelivered(sent: Sequence[int], received: Sequence[int]) -> int:
    """How many items were not received exactly once: sent but never received, received again, received but never sent."""
    once = set(received)
    return len(set(sent) - once) + (len(received) - len(once)) + len(once - set(sent)) + (len(sent) - len(set(sent)))


def startup_commands(address: str) -> dict[str, list[str]]:
    """The startup rows' commands: the console scripts next to this Python when installed, else their modules."""
    scripts = Path(sys.executable).parent
    alice = [str(scripts / "alice")] if (scripts / "alice").exists() else python_module("kvmgr.tools.actor", "--name", "alice")
    kvmgr = [str(scripts / "kvmgr")] if (scripts / "kvmgr").exists() else python_module("kvmgr")
    return {f"alice --key={STARTUP_KEY}": [*alice, f"--key={STARTUP_KEY}", "--address", address],
            "kvmgr --help": [*kvmgr, "--help"], BASELINE: [sys.executable, "-c", "pass"]}


def startup_sample(name: str, transport: str, seconds: Sequence[float], baseline: float) -> Sample:
    """One command's startup row: runs/s from the median wall time, which is also the p50 (and p99: nearest rank)."""
    p50, p99 = statistics.median(seconds), percentile(seconds, 99)
    return Sample(name, transport, STARTUP_WORKLOAD, 1, 1 / p50, p50 * 1e6, p99 * 1e6, "runs/s", baseline_us=baseline * 1e6)


def count_failure(sample: Sample) -> str | None:
    """Why an incr, lock, queue or aio measurement failed (a count that is off, an item not received exactly once, a
    wrong answer), None if not."""
    where = f"{sample.system}/{sample.transport}"
    if sample.wrong_answers:
        return f"{where} gave {sample.wrong_answers:,} concurrent get(s) an answer that was not their own"
    if sample.misdelivered:
        return f"{where} delivered {sample.misdelivered:,} queue item(s) not exactly once"
    if not sample.lost_updates:
        return None
    what = "increments under the lock" if sample.workload == LOCK_WORKLOAD else "increments"
    if sample.lost_updates > 0:
        return f"{where} lost {sample.lost_updates:,} of its {what}"
    return f"{where} counted {-sample.lost_updates:,} more than the {what} made"


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """items starting at position shift (mod len)."""
    if not items:
        return []
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def repeat_jobs(bench: Bench, repeat: int) -> list[tuple[str, Callable[[], list[Sample]]]]:
    """One repeat of the chosen sections: every system once per workload, systems taking turns in an order rotated by `repeat`."""
    jobs: list[tuple[str, Callable[[], list[Sample]]]] = []
    sections = bench.sections
    for clients in bench.profile.client_counts if "point" in sections else ():
        for target in rotated(bench.targets, repeat):
            label = f"{target.system}/{target.transport} get,store,mix x{clients}"
            jobs.append((label, functools.partial(bench.phased, target, POINT_WORKLOADS, clients)))
    for target in rotated([t for t in bench.targets if t.kind in ("kvmgr", "stdlib", "redis")], repeat) if "bulk" in sections else ():
        jobs.append((f"{target.system}/{target.transport} get_many,store_many", functools.partial(bench.phased, target, BULK_WORKLOADS, 1)))
    for clients in bench.profile.client_counts if "incr" in sections else ():
        for target in rotated([t for t in bench.targets if t.kind in INCR_KINDS], repeat):
            jobs.append((f"{target.system}/{target.transport} incr x{clients}", functools.partial(bench.incr, target, clients)))
    coordination = [t for t in bench.targets if t.kind in COORDINATION_KINDS]
    for target in rotated(coordination, repeat) if "lock" in sections else ():
        jobs.append((f"{target.system}/{target.transport} lock hand-off x{HANDOFF_CLIENTS}", functools.partial(bench.lock, target)))
    for target in rotated(coordination, repeat) if "queue" in sections else ():
        jobs.append((f"{target.system}/{target.transport} queue hand-off x{HANDOFF_CLIENTS}", functools.partial(bench.queue, target)))
    for target in rotated(aio_targets(bench.targets), repeat) if "aio" in sections else ():
        gets = f"{bench.profile.aio_gets:,} concurrent gets x{bench.profile.aio_rounds} rounds"
        jobs.append((f"{target.system}/{target.transport} asyncio, {gets}", functools.partial(bench.aio, target)))
    if "startup" in sections:
        runs = bench.profile.startup_runs
        jobs.append((f"startup: alice, kvmgr --help, {BASELINE}, {runs} runs each", functools.partial(bench.startup, repeat)))
    memory_systems = ["kvmgr", "multiprocessing-dict", "python-dict"] + (["redis"] if bench.redis_module else [])
    for system in rotated(memory_systems, repeat) if "memory" in sections else ():
        jobs.append((f"{system} memory ({bench.profile.memory_keys:,} keys)", functools.partial(bench.memory, system)))
    if "idle" in sections:
        profile = bench.profile
        idle = f"kvmgr/tcp get x1 without and with {profile.idle_connections:,} idle connections, {profile.idle_rounds} round(s)"
        jobs.append((idle, bench.idle))
    if "driver" in sections and RUN_DRIVER.exists():
        jobs.append(("kvmgr driver (python run_driver.py)", bench.driver))
    return jobs


def aio_targets(targets: Sequence[Target]) -> list[Target]:
    """The aio rows' targets: kvmgr.aio on each kvmgr server and on Redis, and redis.asyncio on the same Redis."""
    chosen = [replace(t, system="kvmgr.aio", kind="kvmgr.aio", server_pid=None) for t in targets if t.kind == "kvmgr"]
    for redis in (t for t in targets if t.kind == "redis"):
        chosen += [replace(redis, system="kvmgr.aio-redis", kind="kvmgr.aio", server_pid=None),
                   replace(redis, system="redis.asyncio", kind="redis.asyncio", server_pid=None)]
    return chosen


def progress_figure(sample: Sample) -> str:
    """One measurement in a progress line: its workload and rate, or for a startup row its command and median time."""
    if sample.workload == STARTUP_WORKLOAD:
        return f"{sample.system} {sample.p50_us / 1e3:,.0f} ms"
    return f"{sample.workload} {sample.ops_per_s:,.0f} {sample.unit}"


def run_repeats(bench: Bench, repeats: int) -> tuple[list[Sample], int]:
    """Run every job of every repeat; return all samples and how many jobs failed."""
    samples: list[Sample] = []
    failures = 0
    for repeat in range(repeats):
        for label, job in repeat_jobs(bench, repeat):
            began = time.monotonic()
            try:
                measured = job()
            except (KvmgrError, OSError, psutil.Error, ValueError) as exc:
                failures += 1
                progress(f"repeat {repeat + 1}/{repeats}: {label}: FAILED: {exc}")
                continue
            samples += measured
            figures = ", ".join(progress_figure(s) for s in measured)
            progress(f"repeat {repeat + 1}/{repeats}: {label}: {figures} ({time.monotonic() - began:.1f}s)")
            for failure in filter(None, map(count_failure, measured)):
                failures += 1
                progress(f"repeat {repeat + 1}/{repeats}: {label}: FAILED: {failure}")
    return samples, failures
