"""kvmgr bench: kvmgr against its peers on loopback, every system interleaved in one run.

Systems: kvmgr (tcp, unix), the stdlib multiprocessing.Manager().dict() proxy (tcp, unix), Redis through
redis-py (single commands, 100-command pipelines, MGET/MSET; only when a redis-server and redis-py are
installed), and the bare multiprocessing.connection round trip, the floor under any BaseManager proxy.

Every measurement runs in fresh client processes (`python -m kvmgr.bench --worker SPEC`, the authkey in
$KVMGR_AUTHKEY, the server address in $KVMGR_BENCH_ADDRESS), never in threads of this process. Clients
connect, print "ready", and start together when this process writes the start time into a go file.
Each repeat runs every system once per workload, systems taking turns in an order rotated every repeat,
so machine noise hits all of them alike; the table shows the median over repeats.

Units: get/store/mix are operations per second summed over all clients, with latency percentiles over
every client's samples (redis-pipelined counts commands; its latency is one 100-command round trip);
get_many/store_many are keys per second with the latency of one 10,000-key call (the stdlib dict reads
its 10,000-key dict with copy(), writes with update()); memory is the RSS growth of the server process
after storing N keys of 16 bytes with 100-byte values in batches of 10,000 (rate: keys/s of the load,
latency: one batch), against the same dict built in a bare Python process; driver is `python run_driver.py`
end to end (rate: runs/s, latency: its wall time in µs).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from multiprocessing import connection
from multiprocessing.managers import DictProxy, SyncManager
from pathlib import Path
from typing import Any

import psutil
from tabulate import tabulate

from kvmgr.config import AUTHKEY_ENV, format_address, fresh_authkey, parse_address, positive_int
from kvmgr.errors import KvmgrError
from kvmgr.processes import ProcessGroup, child_environment, python_module, read_line, reap, wait_until_ready

ADDRESS_ENV = "KVMGR_BENCH_ADDRESS"
POINT_WORKLOADS = ("get", "store", "mix")
BULK_WORKLOADS = ("get_many", "store_many")
MEMORY_BATCH = 10_000
PIPELINE_DEPTH = 100
VALUE = b"v" * 100
MAX_SAMPLES = 5_000
PHASE_GAP = 0.03
GO_DELAY = 0.02
READY_TIMEOUT = 30.0
FINISH_MARGIN = 60.0
MEMORY_TIMEOUT = 600.0
DRIVER_TIMEOUT = 120.0
DICT_NAMES = ("point_dict", "bulk_dict")
RUN_DRIVER = Path(__file__).resolve().parent.parent / "run_driver.py"


class BenchError(KvmgrError):
    """A benchmark process failed, timed out or printed something unexpected."""


@dataclass(frozen=True)
class Profile:
    """How long and how big a run is."""

    name: str
    duration: float
    client_counts: tuple[int, ...]
    bulk_keys: int
    memory_keys: int
    keyspace: int = 1_000


PROFILES = {
    "full": Profile("full", 2.0, (1, 8), 10_000, 1_000_000),
    "quick": Profile("quick", 0.25, (1, 8), 10_000, 200_000),
    "tiny": Profile("tiny", 0.05, (1, 2), 1_000, 20_000),
}


@dataclass(frozen=True)
class Target:
    """One system on one transport that client processes can talk to."""

    system: str
    transport: str
    kind: str
    address: str
    authkey: str = ""

    def environment(self) -> dict[str, str]:
        """The environment a client process of this target needs (authkey and address, never argv)."""
        return child_environment(self.authkey or None, {ADDRESS_ENV: self.address})


@dataclass
class WorkerSpec:
    """What one client process does; passed to it as JSON on its command line."""

    kind: str
    workloads: list[str]
    duration: float
    go_file: str
    keyspace: int
    bulk_keys: int
    memory_keys: int
    seed: int = 0
    preload: bool = False
    output: str = ""  # the file the worker writes its results to (a pipe could fill and stall it mid-run)


@dataclass
class Sample:
    """One measurement of one system on one workload (or the median of several)."""

    system: str
    transport: str
    workload: str
    clients: int
    ops_per_s: float
    p50_us: float
    p99_us: float
    unit: str = "ops/s"
    rss_growth_bytes: int | None = None

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What identifies the measurement across repeats."""
        return self.system, self.transport, self.workload, self.clients


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
# Client-side adapters: one per kind of system, each with the same small interface


class KvmgrAdapter:
    """A kvmgr Client."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        from kvmgr.client import connect

        self.client = connect(address, authkey=authkey, timeout=30.0)
        self.get, self.store = self.client.get, self.client.store
        self.get_many, self.store_many = self.client.get_many, self.client.store_many

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Store a batch of keys."""
        self.client.store_many(mapping)

    def close(self) -> None:
        """Disconnect."""
        self.client.close()


class KvmgrPipelineAdapter(KvmgrAdapter):
    """Each call sends PIPELINE_DEPTH gets or stores on one connection with Client.pipeline."""

    ops_per_call = PIPELINE_DEPTH

    def __init__(self, address: str, authkey: bytes) -> None:
        super().__init__(address, authkey)
        self.get, self.store = self._pipelined_get, self._pipelined_store

    def _pipelined_get(self, key: str) -> list[Any]:
        return self.client.pipeline([("get", key)] * PIPELINE_DEPTH)

    def _pipelined_store(self, key: str, value: bytes) -> list[Any]:
        return self.client.pipeline([("store", key, value)] * PIPELINE_DEPTH)


class StdlibDictAdapter:
    """Proxies of dicts hosted by a multiprocessing SyncManager server."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        manager = stdlib_manager_class(None)(address=parse_address(address), authkey=authkey)
        manager.connect()
        self.point, self.bulk = manager.point_dict(), manager.bulk_dict()

    def get(self, key: str) -> bytes:
        """One read through the proxy."""
        return self.point[key]

    def store(self, key: str, value: bytes) -> None:
        """One write through the proxy."""
        self.point[key] = value

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Bulk read: a copy of the dict that holds exactly the bulk keys (the proxy has no multi-get)."""
        return self.bulk.copy()

    def store_many(self, mapping: dict[str, bytes]) -> None:
        """Bulk write with update()."""
        self.bulk.update(mapping)

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Store a batch of keys."""
        (self.bulk if bulk else self.point).update(mapping)

    def close(self) -> None:
        """Nothing to close: the manager's connections go with the process."""


class FloorAdapter:
    """A bare multiprocessing.connection to the echo server: one send and one recv per operation."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        self.conn = connection.Client(parse_address(address), authkey=authkey)

    def get(self, key: str) -> object:
        """Round trip of a (key, None) tuple."""
        self.conn.send((key, None))
        return self.conn.recv()

    def store(self, key: str, value: bytes) -> object:
        """Round trip of a (key, value) tuple."""
        self.conn.send((key, value))
        return self.conn.recv()

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Nothing to load: the echo server keeps no data."""

    def close(self) -> None:
        """Disconnect."""
        self.conn.close()


class RedisAdapter:
    """redis-py against the benchmark's own redis-server: GET, SET, MGET, MSET."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        import redis

        self.redis = redis.Redis.from_url(address, socket_timeout=30.0)

    def get(self, key: str) -> bytes | None:
        """GET."""
        return self.redis.get(key)

    def store(self, key: str, value: bytes) -> object:
        """SET."""
        return self.redis.set(key, value)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET."""
        return self.redis.mget(keys)

    def store_many(self, mapping: dict[str, bytes]) -> object:
        """MSET."""
        return self.redis.mset(mapping)

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Store a batch of keys."""
        self.redis.mset(mapping)

    def close(self) -> None:
        """Disconnect."""
        self.redis.close()


class RedisPipelineAdapter(RedisAdapter):
    """Each call sends PIPELINE_DEPTH GETs or SETs on random keys in one pipeline."""

    ops_per_call = PIPELINE_DEPTH
    keyspace = 1_000

    def get(self, key: str) -> list[Any]:
        """PIPELINE_DEPTH GETs in one round trip (key is one of them)."""
        pipe = self.redis.pipeline(transaction=False)
        for other in self._keys_like(key):
            pipe.get(other)
        return pipe.execute()

    def store(self, key: str, value: bytes) -> list[Any]:
        """PIPELINE_DEPTH SETs in one round trip (key is one of them)."""
        pipe = self.redis.pipeline(transaction=False)
        for other in self._keys_like(key):
            pipe.set(other, value)
        return pipe.execute()

    def _keys_like(self, key: str) -> list[str]:
        number = int(key[1:])
        return [f"{key[0]}{(number + step) % self.keyspace:015d}" for step in range(PIPELINE_DEPTH)]


class BareDictAdapter:
    """A plain dict in this process: the memory baseline."""

    ops_per_call = 1

    def __init__(self, address: str, authkey: bytes) -> None:
        self.data: dict[str, bytes] = {}

    def load(self, mapping: dict[str, bytes], bulk: bool = False) -> None:
        """Add a batch of keys."""
        self.data.update(mapping)

    def close(self) -> None:
        """Nothing to close."""


ADAPTERS: dict[str, Callable[[str, bytes], Any]] = {
    "kvmgr": KvmgrAdapter,
    "kvmgr-pipelined": KvmgrPipelineAdapter,
    "stdlib": StdlibDictAdapter,
    "floor": FloorAdapter,
    "redis": RedisAdapter,
    "redis-pipelined": RedisPipelineAdapter,
    "bare": BareDictAdapter,
}


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


# ----------------------------------------------------------------------------------------------
# Peer servers run by `python -m kvmgr.bench --serve ROLE --address ADDRESS`


def stdlib_manager_class(shared: Mapping[str, dict] | None) -> type[SyncManager]:
    """A SyncManager with the benchmark's dicts registered (served from `shared` on the server side)."""

    class BenchManager(SyncManager):
        """SyncManager plus the benchmark's shared dicts."""

    for name in DICT_NAMES:
        source = None if shared is None else (lambda hosted=shared[name]: hosted)
        BenchManager.register(name, callable=source, proxytype=DictProxy)
    return BenchManager


def serve_stdlib(address: str, authkey: bytes) -> int:
    """Serve the benchmark dicts from a stdlib SyncManager server until terminated."""
    manager = stdlib_manager_class({name: {} for name in DICT_NAMES})(address=parse_address(address), authkey=authkey)
    server = manager.get_server()
    print(f"ready {format_address(server.address)}", flush=True)
    server.serve_forever()
    return 0


def serve_floor(address: str, authkey: bytes) -> int:
    """Echo every object received on every connection until terminated."""
    listener = connection.Listener(parse_address(address), authkey=authkey)
    print(f"ready {format_address(listener.address)}", flush=True)
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, connection.AuthenticationError):
            continue
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def echo(conn: connection.Connection) -> None:
    """Send back whatever arrives until the peer leaves."""
    with conn:
        while True:
            try:
                conn.send(conn.recv())
            except (EOFError, OSError):
                return


SERVE_ROLES = {"stdlib": serve_stdlib, "floor": serve_floor}


# ----------------------------------------------------------------------------------------------
# Starting servers and client processes (always through a ProcessGroup)


def progress(message: str) -> None:
    """One progress line on stderr."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def start_peer_server(group: ProcessGroup, role: str, address: str) -> tuple[psutil.Popen, str, str]:
    """Start a stdlib or floor server process and wait for its ready line; return it, its address and key."""
    authkey = fresh_authkey()
    process = group.launch(python_module("kvmgr.bench", "--serve", role, "--address", address), child_environment(authkey))
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
    """The kvmgr.redis_server module when redis-server and redis-py are both there, else None and why not."""
    try:
        from kvmgr import redis_server
    except ImportError:
        return None, "kvmgr.redis_server is not available"
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
        targets.append(Target("kvmgr", transport, "kvmgr", server.address_text, server.authkey))
        targets.append(Target("kvmgr-pipelined", transport, "kvmgr-pipelined", server.address_text, server.authkey))
    for system, role in (("multiprocessing-dict", "stdlib"), ("connection-floor", "floor")):
        for transport, address in (("tcp", "127.0.0.1:0"), ("unix", str(workdir / f"{role}.sock"))):
            _, actual, authkey = start_peer_server(group, role, address)
            targets.append(Target(system, transport, role, actual, authkey))
    if redis_module is not None:
        url = redis_module.start_redis_server(group).url
        targets += [Target("redis", "tcp", "redis", url), Target("redis-pipelined", "tcp", "redis-pipelined", url)]
    return targets


def run_clients(group: ProcessGroup, target: Target, spec: WorkerSpec, clients: int, timeout: float) -> list[list[dict]]:
    """Run `clients` worker processes that start together; return each one's per-workload outputs."""
    env = target.environment()
    workers = []
    try:
        outputs = [Path(spec.go_file).with_name(f"{Path(spec.go_file).name}-client{index}.jsonl") for index in range(clients)]
        for index in range(clients):
            worker_spec = replace(spec, seed=index, preload=spec.preload and index == 0, output=str(outputs[index]))
            workers.append(group.launch(python_module("kvmgr.bench", "--worker", json.dumps(asdict(worker_spec))), env))
        deadline = time.monotonic() + READY_TIMEOUT
        for worker in workers:
            if read_line(worker, deadline) != "ready":
                raise BenchError(f"a {target.system}/{target.transport} client did not get ready: {failure_text(worker)}")
        write_go_file(Path(spec.go_file), time.time() + GO_DELAY)
        return [finished_output(worker, timeout, output) for worker, output in zip(workers, outputs, strict=True)]
    finally:
        for worker in workers:
            reap(worker)
        Path(spec.go_file).unlink(missing_ok=True)


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


# ----------------------------------------------------------------------------------------------
# Measurements: each returns Samples


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


def combine(system: str, transport: str, workload: str, outputs: list[list[dict]], index: int) -> Sample:
    """Aggregate ops/s over all clients and latency percentiles over all their samples for one workload."""
    phases = [per_client[index] for per_client in outputs]
    rate = sum(phase["ops"] / phase["seconds"] for phase in phases)
    latencies = sorted(value for phase in phases for value in phase["latencies_us"])
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return Sample(system, transport, workload, len(outputs), rate, p50, p99, unit_of(system, workload))


def percentile(ordered: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(percent / 100 * (len(ordered) - 1)))]


def unit_of(system: str, workload: str) -> str:
    """The unit of a rate."""
    if workload in BULK_WORKLOADS or workload == "memory":
        return "keys/s"
    return "cmds/s" if system.endswith("-pipelined") else "ops/s"


# ----------------------------------------------------------------------------------------------
# The run: interleaved repeats, medians, ratios, output


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
            jobs.append((label, lambda t=target, c=clients: bench.phased(t, POINT_WORKLOADS, c)))
    for target in rotated([t for t in bench.targets if t.kind in ("kvmgr", "stdlib", "redis")], repeat):
        jobs.append((f"{target.system}/{target.transport} get_many,store_many", lambda t=target: bench.phased(t, BULK_WORKLOADS, 1)))
    memory_systems = ["kvmgr", "multiprocessing-dict", "python-dict"] + (["redis"] if bench.redis_module else [])
    for system in rotated(memory_systems, repeat):
        jobs.append((f"{system} memory ({bench.profile.memory_keys:,} keys)", lambda s=system: bench.memory(s)))
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


def medians(samples: Sequence[Sample]) -> list[Sample]:
    """One Sample per measurement: the median over repeats of each number."""
    grouped: dict[tuple, list[Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.key, []).append(sample)
    merged = []
    for group in grouped.values():
        growths = [s.rss_growth_bytes for s in group if s.rss_growth_bytes is not None]
        merged.append(replace(
            group[0],
            ops_per_s=statistics.median(s.ops_per_s for s in group),
            p50_us=statistics.median(s.p50_us for s in group),
            p99_us=statistics.median(s.p99_us for s in group),
            rss_growth_bytes=int(statistics.median(growths)) if growths else None,
        ))
    return sorted(merged, key=lambda s: (workload_order(s.workload), s.clients, s.system, s.transport))


def workload_order(workload: str) -> int:
    """Position of a workload in the tables."""
    order = [*POINT_WORKLOADS, *BULK_WORKLOADS, "memory", "driver"]
    return order.index(workload) if workload in order else len(order)


def compute_ratios(results: Sequence[Sample], client_counts: Sequence[int]) -> dict[str, float]:
    """kvmgr ÷ each peer on comparable workloads (throughput: >1 means kvmgr is faster; memory: >1 means bigger)."""
    found = {sample.key: sample for sample in results}
    ratios: dict[str, float] = {}

    def add(name: str, mine: tuple, theirs: tuple, attribute: str = "ops_per_s") -> None:
        if mine in found and theirs in found and getattr(found[theirs], attribute):
            ratios[name] = round(getattr(found[mine], attribute) / getattr(found[theirs], attribute), 3)

    most = max(client_counts)
    for transport in ("tcp", "unix"):
        peers = [("multiprocessing-dict", transport), ("connection-floor", transport)]
        peers += [("redis", "tcp"), ("redis-pipelined", "tcp")] if transport == "tcp" else []
        for workload in POINT_WORKLOADS:
            for clients in client_counts:
                mine = ("kvmgr", transport, workload, clients)
                for system, theirs in peers:
                    add(f"kvmgr/{transport} {workload} x{clients} vs {system}/{theirs}", mine, (system, theirs, workload, clients))
            add(f"kvmgr-pipelined/{transport} {workload} vs kvmgr/{transport} sequential",
                ("kvmgr-pipelined", transport, workload, 1), ("kvmgr", transport, workload, 1))
            if most > 1:
                add(f"kvmgr/{transport} {workload} x{most} vs x1", ("kvmgr", transport, workload, most), ("kvmgr", transport, workload, 1))
        for workload, redis_name in (("get_many", "MGET"), ("store_many", "MSET")):
            mine = ("kvmgr", transport, workload, 1)
            add(f"kvmgr/{transport} {workload} vs multiprocessing-dict/{transport}", mine, ("multiprocessing-dict", transport, workload, 1))
            if transport == "tcp":
                add(f"kvmgr/tcp {workload} vs redis/tcp {redis_name}", mine, ("redis", "tcp", workload, 1))
    memory = ("kvmgr", "unix", "memory", 1)
    for name, peer in (("python-dict", ("python-dict", "in-process", "memory", 1)),
                       ("multiprocessing-dict", ("multiprocessing-dict", "unix", "memory", 1)), ("redis", ("redis", "tcp", "memory", 1))):
        add(f"kvmgr memory vs {name}", memory, peer, "rss_growth_bytes")
    driver = found.get(("kvmgr", "tcp", "driver", 1))
    if driver is not None:
        ratios["driver p50 seconds"] = round(driver.p50_us / 1e6, 3)
    return ratios


def results_table(results: Sequence[Sample], profile: Profile) -> str:
    """The results as a text table."""
    rows = []
    for s in results:
        rate, p50, p99 = f"{s.ops_per_s:,.0f}", f"{s.p50_us:,.1f}", f"{s.p99_us:,.1f}"
        rows.append([s.system, s.transport, s.workload, s.clients, rate, s.unit, p50, p99, result_note(s, profile)])
    headers = ["system", "transport", "workload", "clients", "rate", "unit", "p50 µs", "p99 µs", "note"]
    alignment = ("left", "left", "left", "right", "right", "left", "right", "right")
    return tabulate(rows, headers=headers, colalign=alignment, disable_numparse=True)


def result_note(sample: Sample, profile: Profile) -> str:
    """The memory figures of a memory result, the seconds per run of the driver, else nothing."""
    if sample.rss_growth_bytes is not None:
        growth = sample.rss_growth_bytes
        return f"RSS +{growth / 2**20:,.1f} MiB for {profile.memory_keys:,} keys ({growth / profile.memory_keys:,.0f} B/key)"
    if sample.workload == "driver":
        return f"{sample.p50_us / 1e6:.2f} s per run"
    return ""


def ratios_table(ratios: Mapping[str, float]) -> str:
    """The ratios as a text table."""
    rows = [[name, f"{value:,.3f}"] for name, value in ratios.items()]
    return tabulate(rows, headers=["kvmgr ÷ peer", "ratio"], colalign=("left", "right"), disable_numparse=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def report(results: list[Sample], ratios: dict[str, float], profile: Profile, repeats: int) -> dict[str, Any]:
    """The JSON document --json writes."""
    return {
        "machine": machine_info(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "settings": {**asdict(profile), "repeats": repeats},
        "results": [asdict(sample) for sample in results],
        "ratios": ratios,
    }


def draw_plot(results: Sequence[Sample], path: Path) -> None:
    """Bar chart of the rate per system and workload (1 client), and throughput against client count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (bars, lines) = plt.subplots(1, 2, figsize=(16, 6))
    workloads = [*POINT_WORKLOADS, *BULK_WORKLOADS]
    systems = sorted({(s.system, s.transport) for s in results if s.workload in workloads})
    width = 0.8 / max(1, len(systems))
    found = {s.key: s for s in results}
    for offset, (system, transport) in enumerate(systems):
        heights = [found[key].ops_per_s if (key := (system, transport, w, 1)) in found else 0 for w in workloads]
        bars.bar([i + offset * width for i in range(len(workloads))], heights, width, label=f"{system}/{transport}")
    bars.set_xticks([i + 0.4 - width / 2 for i in range(len(workloads))], workloads)
    bars.set_yscale("log")
    bars.set_ylabel("ops/s (get/store/mix), keys/s (bulk); 1 client")
    bars.legend(fontsize="small")
    for system, transport in systems:
        points = sorted((s.clients, s.ops_per_s) for s in results if (s.system, s.transport, s.workload) == (system, transport, "get"))
        if points:
            lines.plot(*zip(*points, strict=True), marker="o", label=f"{system}/{transport}")
    lines.set_xticks(sorted({s.clients for s in results if s.workload == "get"}))
    lines.set_xlabel("clients")
    lines.set_ylabel("get ops/s, all clients")
    lines.set_yscale("log")
    lines.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def run_bench_command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the tables, write --json and --plot; 1 if a measurement failed."""
    if args.checker:
        return run_checker_command(args)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("kvmgr bench: --plot needs matplotlib: pip install 'kvmgr[plot]'", file=sys.stderr)
        return 2
    profile = PROFILES["tiny" if args.tiny else "quick" if args.quick else "full"]
    repeats = args.repeats or (1 if args.tiny or args.quick else 3)
    redis_module, why_not = load_redis()
    if redis_module is None:
        progress(f"skipping redis: {why_not}")
    if profile.name != "full":
        full = PROFILES["full"]
        progress(f"{profile.name} run: {profile.duration:g} s per workload instead of {full.duration:g} s, {repeats} repeat(s), "
                 f"memory with {profile.memory_keys:,} keys instead of {full.memory_keys:,}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvmgr-bench-") as scratch, ProcessGroup() as group:
        bench = Bench(group, Path(scratch), profile, redis_module)
        bench.targets = start_targets(group, bench.workdir, redis_module)
        samples, failures = run_repeats(bench, repeats)
    results = medians(samples)
    ratios = compute_ratios(results, profile.client_counts)
    print(results_table(results, profile))
    print()
    print(ratios_table(ratios))
    progress(f"{len(results)} results from {repeats} repeat(s) in {time.monotonic() - started:.1f}s")
    write_outputs(args, results, ratios, profile, repeats)
    if failures:
        progress(f"{failures} measurement(s) failed; see the FAILED lines above")
    return 1 if failures else 0


def run_checker_command(args: argparse.Namespace) -> int:
    """--checker: time `kvmgr check` on a 50,000-operation history of 8 clients over 16 keys."""
    from kvmgr.check_bench import run_checker_benchmark

    progress("timing the linearizability checker on a synthetic 50,000-operation history (8 clients, 16 keys)")
    result = run_checker_benchmark(repeats=args.repeats or 3)
    rows = [["operations", result["operations"]], ["clients", result["clients"]], ["keys", result["keys"]],
            ["linearizable", result["linearizable"]], ["seconds (median)", round(result["seconds_median"], 3)],
            ["seconds (all runs)", ", ".join(f"{t:.3f}" for t in result["seconds_all"])]]
    print(tabulate(rows, headers=["checker", ""]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def write_outputs(args: argparse.Namespace, results: list[Sample], ratios: dict[str, float], profile: Profile, repeats: int) -> None:
    """Write the --json and --plot files that were asked for."""
    if args.json:
        Path(args.json).write_text(json.dumps(report(results, ratios, profile, repeats), indent=2) + "\n")
        progress(f"wrote {args.json}")
    if args.plot:
        draw_plot(results, Path(args.plot))
        progress(f"wrote {args.plot}")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `kvmgr bench`."""
    parser.add_argument(
        "--quick", action="store_true", help="under a minute: 0.25 s per workload, 200,000 keys for memory, one repeat unless --repeats"
    )
    parser.add_argument("--repeats", type=positive_int, help="interleaved repeats; the median is reported (default 3, --quick 1)")
    parser.add_argument("--json", metavar="FILE", help="write the machine, the results and the ratios as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the results (needs matplotlib: pip install 'kvmgr[plot]')")
    parser.add_argument("--checker", action="store_true", help="only time the linearizability checker on a 50,000-operation history")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `bench` subcommand."""
    parser = subparsers.add_parser(
        "bench", help="measure kvmgr against its peers on loopback",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    add_bench_arguments(parser)
    parser.set_defaults(handler=run_bench_command)


def main(argv: Sequence[str] | None = None) -> int:
    """python -m kvmgr.bench: the benchmark itself, or (hidden) one of its client or server processes."""
    parser = argparse.ArgumentParser(prog="python -m kvmgr.bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=sorted(SERVE_ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(WorkerSpec(**json.loads(args.worker)))
    if args.serve:
        return SERVE_ROLES[args.serve](args.address, os.environ.get(AUTHKEY_ENV, "").encode())
    try:
        return run_bench_command(args)
    except KvmgrError as exc:
        print(f"kvmgr bench: error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
