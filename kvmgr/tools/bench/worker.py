"""The client process (`python -m kvmgr.tools.bench --worker SPEC`): connect, say ready, wait for the go file, run
the workloads' phases and write one JSON line per workload to the spec's output file."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from kvmgr.config import AUTHKEY_ENV
from kvmgr.tools.bench.adapters import ADAPTERS, RedisPipelineAdapter
from kvmgr.tools.bench.common import ADDRESS_ENV, INCR_WORKLOAD, PHASE_GAP, READY_TIMEOUT, BenchError, WorkerSpec

MEMORY_BATCH = 10_000
VALUE = b"v" * 100
MAX_SAMPLES = 5_000


# ----------------------------------------------------------------------------------------------
# Keys and values shared by the client processes


def point_keys(count: int) -> list[str]:
    """The keys of the get/store/mix workloads (16 bytes each)."""
    return [f"p{index:015d}" for index in range(count)]


def bulk_keys(count: int) -> list[str]:
    """The keys of the get_many/store_many workloads (16 bytes each)."""
    return [f"b{index:015d}" for index in range(count)]


def memory_batches(count: int) -> Iterator[dict[str, bytes]]:
    """count distinct 16-byte keys with distinct 100-byte values, in batches of MEMORY_BATCH."""
    filler = b"m" * 84
    for start in range(0, count, MEMORY_BATCH):
        stop = min(start + MEMORY_BATCH, count)
        yield {f"m{index:015d}": b"%016d" % index + filler for index in range(start, stop)}


# ----------------------------------------------------------------------------------------------
# The client process


def run_worker(spec: WorkerSpec) -> int:
    """Connect, preload if asked, say ready, wait for the go file, run each workload, print one JSON line each."""
    adapter = ADAPTERS[spec.kind](os.environ.get(ADDRESS_ENV, ""), os.environ.get(AUTHKEY_ENV, "").encode())
    if spec.preload:
        preload(adapter, spec)
    print("ready", flush=True)
    start_at = wait_for_go(Path(spec.go_file))
    rng = random.Random(spec.seed)
    with open(spec.output, "w", encoding="utf-8") as results:
        for index, workload in enumerate(spec.workloads):
            begin = start_at + index * (spec.duration + PHASE_GAP)
            outcome = run_memory_load(adapter, spec) if workload == "memory" else run_phase(adapter, workload, spec, rng, begin)
            results.write(json.dumps({"workload": workload, **outcome}) + "\n")
    adapter.close()
    return 0


def run_holder(count: int) -> int:
    """Open `count` kvmgr connections that each make one call, say so, and hold them idle until stdin closes."""
    from kvmgr.client import connect

    address, authkey = os.environ.get(ADDRESS_ENV, ""), os.environ.get(AUTHKEY_ENV, "").encode()
    clients = [connect(address, authkey=authkey, timeout=READY_TIMEOUT) for _ in range(count)]
    for client in clients:
        client.exists("idle")
    print(f"holding {len(clients)}", flush=True)
    sys.stdin.read()  # until the benchmark closes the pipe or reaps this process (or dies: no orphan either way)
    return 0


def preload(adapter: Any, spec: WorkerSpec) -> None:
    """Give every point and bulk key a value so reads find them."""
    adapter.load(dict.fromkeys(point_keys(spec.keyspace), VALUE))
    adapter.load(dict.fromkeys(bulk_keys(spec.bulk_keys), VALUE), bulk=True)


def wait_for_go(go_file: Path) -> float:
    """Poll for the go file (bounded by READY_TIMEOUT) and return the start time written in it."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise BenchError(f"no go signal within {READY_TIMEOUT:g}s")
        time.sleep(0.001)
    return float(go_file.read_text())


def make_step(adapter: Any, workload: str, spec: WorkerSpec, rng: random.Random) -> tuple[Callable[[], object], int]:
    """The call one loop iteration makes, and how many operations (or keys) it counts for."""
    keys = point_keys(spec.keyspace)
    if isinstance(adapter, RedisPipelineAdapter):
        adapter.keyspace = spec.keyspace
    if workload == "get":
        return (lambda: adapter.get(rng.choice(keys))), adapter.ops_per_call
    if workload == "store":
        return (lambda: adapter.store(rng.choice(keys), VALUE)), adapter.ops_per_call
    if workload == "mix":
        return (lambda: mixed_call(adapter, rng, keys)), adapter.ops_per_call
    if workload == INCR_WORKLOAD:
        return (lambda: adapter.incr(spec.counter_key)), 1
    many = bulk_keys(spec.bulk_keys)
    if workload == "get_many":
        return (lambda: adapter.get_many(many)), len(many)
    if workload == "store_many":
        mapping = dict.fromkeys(many, VALUE)
        return (lambda: adapter.store_many(mapping)), len(many)
    raise BenchError(f"unknown workload {workload!r}")


def mixed_call(adapter: Any, rng: random.Random, keys: Sequence[str]) -> object:
    """Half gets, half stores, on random keys."""
    if rng.random() < 0.5:
        return adapter.get(rng.choice(keys))
    return adapter.store(rng.choice(keys), VALUE)


def run_phase(adapter: Any, workload: str, spec: WorkerSpec, rng: random.Random, begin: float) -> dict[str, Any]:
    """Call the workload's step from `begin` for spec.duration seconds (at least once); count and time every call."""
    step, ops_per_call = make_step(adapter, workload, spec, rng)
    time.sleep(max(0.0, begin - time.time()))
    clock = time.perf_counter
    now = started = clock()
    stop = started + spec.duration - max(0.0, time.time() - begin)
    latencies: list[float] = []
    while True:
        step()
        after = clock()
        latencies.append(after - now)
        now = after
        if now >= stop:
            break
    return phase_outcome(len(latencies) * ops_per_call, now - started, latencies)


def run_memory_load(adapter: Any, spec: WorkerSpec) -> dict[str, Any]:
    """Store spec.memory_keys keys in batches; a bare dict also reports its own RSS growth."""
    before = psutil.Process().memory_info().rss
    latencies: list[float] = []
    started = time.perf_counter()
    for batch in memory_batches(spec.memory_keys):
        began = time.perf_counter()
        adapter.load(batch)
        latencies.append(time.perf_counter() - began)
    outcome = phase_outcome(spec.memory_keys, time.perf_counter() - started, latencies)
    outcome["rss_growth_bytes"] = psutil.Process().memory_info().rss - before
    return outcome


def phase_outcome(ops: int, seconds: float, latencies: list[float]) -> dict[str, Any]:
    """ops, seconds and at most MAX_SAMPLES latency samples (µs), drawn uniformly."""
    if len(latencies) > MAX_SAMPLES:
        latencies = random.sample(latencies, MAX_SAMPLES)
    return {"ops": ops, "seconds": seconds, "latencies_us": [round(value * 1e6, 1) for value in latencies]}
