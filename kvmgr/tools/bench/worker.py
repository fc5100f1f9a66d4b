"""The client process (`python -m kvmgr.tools.bench --worker SPEC`): connect, say ready, then for each workload wait
for its phase's go file, run the phase, write one JSON line to the spec's output file and say done."""

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
from kvmgr.tools.bench.common import (
    ADDRESS_ENV,
    AIO_WORKLOAD,
    HANDOFF_CLIENTS,
    INCR_WORKLOAD,
    LOCK_WORKLOAD,
    QUEUE_WORKLOAD,
    READY_TIMEOUT,
    BenchError,
    WorkerSpec,
)

MEMORY_BATCH = 10_000
VALUE = b"v" * 100
MAX_SAMPLES = 5_000
NO_HOLDER = -1  # the lock row's record before anyone held the lock
STOP = -1  # the queue row's last item: its receiver stops
HANDOFF_TIMEOUT = 20.0  # the longest a queue get waits for the other process (below the clients' 30 s socket timeouts)


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
    """Connect, preload if asked, say ready; then per workload wait for its go file, run it, write its JSON line, say done.

    The benchmark writes a phase's go file only once every client has said done for the one before, so phases never
    overlap and the server is idle at their boundaries, where the benchmark reads the server's CPU clock.
    """
    adapter = ADAPTERS[spec.kind](os.environ.get(ADDRESS_ENV, ""), os.environ.get(AUTHKEY_ENV, "").encode())
    if spec.preload:
        preload(adapter, spec)
    prepare_handoffs(adapter, spec)
    print("ready", flush=True)
    rng = random.Random(spec.seed)
    with open(spec.output, "w", encoding="utf-8") as results:
        for index, workload in enumerate(spec.workloads):
            begin = wait_for_go(spec.go_file_of(index))
            outcome = run_workload(adapter, workload, spec, rng, begin)
            results.write(json.dumps({"workload": workload, **outcome}) + "\n")
            results.flush()
            print("done", flush=True)
    adapter.close()
    return 0


def run_workload(adapter: Any, workload: str, spec: WorkerSpec, rng: random.Random, begin: float) -> dict[str, Any]:
    """Run one workload's phase (or the memory load) and return what it measured."""
    if workload == "memory":
        return run_memory_load(adapter, spec)
    if workload == LOCK_WORKLOAD:
        return run_lock_phase(adapter, spec, begin)
    if workload == QUEUE_WORKLOAD:
        return run_queue_phase(adapter, spec, begin)
    if workload == AIO_WORKLOAD:
        return run_aio_rounds(adapter, spec, begin)
    return run_phase(adapter, workload, spec, rng, begin)


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


def queue_names(spec: WorkerSpec) -> tuple[str, str]:
    """The queue row's inbox of this client and the inbox of the next one, which is its outbox."""
    if spec.seed >= HANDOFF_CLIENTS:
        raise BenchError(f"the queue row runs {HANDOFF_CLIENTS} clients, not more")
    return f"{spec.counter_key}:to{spec.seed}", f"{spec.counter_key}:to{(spec.seed + 1) % HANDOFF_CLIENTS}"


def prepare_handoffs(adapter: Any, spec: WorkerSpec) -> None:
    """Connect (and make the stdlib's proxies) for the lock and queue rows before saying ready: no hand-off pays for it.

    The lock row takes and frees its Lock object once, so kvmgr's Lock has opened the session it keeps for every
    acquire of the phase (the record is untouched: the phase counts only its own acquisitions).
    """
    if LOCK_WORKLOAD in spec.workloads:
        lock = adapter.lock(spec.counter_key)
        lock.acquire()
        lock.release()
        adapter.read_record(f"{spec.counter_key}:record")
    if QUEUE_WORKLOAD in spec.workloads:
        adapter.prepare(queue_names(spec))


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


def phase_clock(spec: WorkerSpec, begin: float) -> tuple[float, float]:
    """Wait for `begin` (wall clock); the monotonic time the phase starts and the one it stops at."""
    time.sleep(max(0.0, begin - time.time()))
    started = time.monotonic()
    return started, started + spec.duration - max(0.0, time.time() - begin)


def run_lock_phase(adapter: Any, spec: WorkerSpec, begin: float) -> dict[str, Any]:
    """Take the lock spec.counter_key in turns with the other clients until spec.duration has passed (at least once).

    Under the lock each holder reads a record (count, holder, stamp) and stores it back with count + 1 (a get and a
    store: lost increments would show a broken lock). An acquisition whose record names another holder is a hand-off;
    its latency runs from that holder's turn ending (its stamp, taken before its store and release) or, if later,
    from this process starting to wait, to acquire() returning. time.monotonic is one clock for every process here.
    """
    lock = adapter.lock(spec.counter_key)
    record_key, me = f"{spec.counter_key}:record", spec.seed
    started, stop = phase_clock(spec, begin)
    acquisitions, latencies = 0, []
    while True:
        waiting_from = time.monotonic()
        lock.acquire()
        acquired = time.monotonic()
        count, holder, stamp = adapter.read_record(record_key) or (0, NO_HOLDER, 0.0)
        if holder not in (me, NO_HOLDER):
            latencies.append(acquired - max(waiting_from, stamp))
        acquisitions += 1
        adapter.write_record(record_key, [count + 1, me, stamp if holder == me else time.monotonic()])
        lock.release()
        if acquired >= stop:
            break
    outcome = phase_outcome(len(latencies), time.monotonic() - started, latencies)
    return {**outcome, "acquisitions": acquisitions}


def run_queue_phase(adapter: Any, spec: WorkerSpec, begin: float) -> dict[str, Any]:
    """Pass numbered items back and forth with the other client through two queues, one item in flight, until
    spec.duration has passed; the first client puts item 0, whoever receives an item after that puts STOP instead.

    Each item is (number, stamp): its latency runs from just before its put to the return of its get in the other
    process. The numbers sent and received let the benchmark check that every item arrived exactly once.
    """
    me = spec.seed
    inbox, outbox = queue_names(spec)
    started, stop = phase_clock(spec, begin)
    sent: list[int] = []
    received: list[int] = []
    latencies: list[float] = []
    if me == 0:
        adapter.put(outbox, [0, time.monotonic()])
        sent.append(0)
    while True:
        number, stamp = adapter.take(inbox, HANDOFF_TIMEOUT)
        arrived = time.monotonic()
        if number == STOP:
            break
        received.append(number)
        latencies.append(arrived - stamp)
        following = STOP if arrived >= stop else number + 1
        adapter.put(outbox, [following, time.monotonic()])
        if following == STOP:
            break
        sent.append(following)
    outcome = phase_outcome(len(received), time.monotonic() - started, latencies)
    return {**outcome, "sent": sent, "received": received}


def run_aio_rounds(adapter: Any, spec: WorkerSpec, begin: float) -> dict[str, Any]:
    """From `begin`, rounds of spec.aio_gets concurrent gets on one asyncio client: the rounds' seconds and wrong answers."""
    time.sleep(max(0.0, begin - time.time()))
    rounds = adapter.concurrent_gets(spec.aio_gets, spec.aio_rounds, spec.aio_warmup, spec.counter_key)
    outcome = phase_outcome(spec.aio_gets * len(rounds.seconds), sum(rounds.seconds), rounds.seconds)
    return {**outcome, "wrong_answers": rounds.wrong_answers}


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
