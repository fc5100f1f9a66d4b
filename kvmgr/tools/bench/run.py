"""The measurements (each returns Samples) and the run: every system once per workload per repeat, in an order
rotated every repeat."""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from kvmgr.errors import KvmgrError
from kvmgr.tools.bench.common import (
    BULK_WORKLOADS,
    GO_DELAY,
    PHASE_GAP,
    POINT_WORKLOADS,
    BenchError,
    Profile,
    Sample,
    Target,
    WorkerSpec,
    progress,
)
from kvmgr.tools.bench.launch import last_line, run_clients, start_peer_server
from kvmgr.tools.bench.stats import combine
from kvmgr.tools.processes import ProcessGroup, child_environment, reap

FINISH_MARGIN = 60.0
MEMORY_TIMEOUT = 600.0
DRIVER_TIMEOUT = 120.0
RUN_DRIVER = Path(__file__).resolve().parents[3] / "run_driver.py"  # kvmgr/tools/bench/run.py -> the checkout


@dataclass
class Bench:
    """Everything one run shares: the process group, its scratch directory, the profile and the targets."""

    group: ProcessGroup
    workdir: Path
    profile: Profile
    redis_module: Any
    targets: list[Target] = field(default_factory=list)
    counter: int = 0

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
        spec = self.spec(target.kind, workloads)
        timeout = GO_DELAY + len(workloads) * (spec.duration + PHASE_GAP) + FINISH_MARGIN
        outputs = run_clients(self.group, target, spec, clients, timeout)
        return [combine(target.system, target.transport, workload, outputs, index) for index, workload in enumerate(workloads)]

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
        started = time.perf_counter()
        process = self.group.launch([sys.executable, str(RUN_DRIVER)], child_environment(None))
        try:
            _, err = process.communicate(timeout=DRIVER_TIMEOUT)
            seconds = time.perf_counter() - started
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"run_driver.py did not finish within {DRIVER_TIMEOUT:g}s") from exc
        finally:
            reap(process)
        if process.returncode != 0:
            raise BenchError(f"run_driver.py failed with exit status {process.returncode}: {last_line(err.decode(errors='replace'))}")
        return [Sample("kvmgr", "tcp", "driver", 1, 1 / seconds, seconds * 1e6, seconds * 1e6, "runs/s")]


def rotated(items: Sequence[Any], shift: int) -> list[Any]:
    """items starting at position shift (mod len)."""
    if not items:
        return []
    shift %= len(items)
    return [*items[shift:], *items[:shift]]


def repeat_jobs(bench: Bench, repeat: int) -> list[tuple[str, Callable[[], list[Sample]]]]:
    """One repeat: every system once per workload, systems taking turns in an order rotated by `repeat`."""
    jobs: list[tuple[str, Callable[[], list[Sample]]]] = []
    for clients in bench.profile.client_counts:
        for target in rotated(bench.targets, repeat):
            label = f"{target.system}/{target.transport} get,store,mix x{clients}"
            jobs.append((label, functools.partial(bench.phased, target, POINT_WORKLOADS, clients)))
    for target in rotated([t for t in bench.targets if t.kind in ("kvmgr", "stdlib", "redis")], repeat):
        jobs.append((f"{target.system}/{target.transport} get_many,store_many", functools.partial(bench.phased, target, BULK_WORKLOADS, 1)))
    memory_systems = ["kvmgr", "multiprocessing-dict", "python-dict"] + (["redis"] if bench.redis_module else [])
    for system in rotated(memory_systems, repeat):
        jobs.append((f"{system} memory ({bench.profile.memory_keys:,} keys)", functools.partial(bench.memory, system)))
    if RUN_DRIVER.exists():
        jobs.append(("kvmgr driver (python run_driver.py)", bench.driver))
    return jobs


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
            figures = ", ".join(f"{s.workload} {s.ops_per_s:,.0f} {s.unit}" for s in measured)
            progress(f"repeat {repeat + 1}/{repeats}: {label}: {figures} ({time.monotonic() - began:.1f}s)")
    return samples, failures
