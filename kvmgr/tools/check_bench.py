"""Synthetic concurrent histories and a benchmark of the linearizability checker."""

from __future__ import annotations

import argparse
import heapq
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from kvmgr.errors import KvmgrError
from kvmgr.tools.processes import ProcessGroup, python_module
from kvmgr.verify.check import check_operations
from kvmgr.verify.history import Operation

DEFAULT_MIX: Mapping[str, float] = {"get": 0.45, "store": 0.25, "cas": 0.2, "delete": 0.1}

_INVOKE, _APPLY, _RESPOND = 0, 1, 2


@dataclass
class _Call:
    """An operation in flight inside the simulation."""

    client: str
    op: str
    key: str
    value: str | None
    expected: str | None
    start: int
    outcome: str = "ok"
    result: str | bool | None = None


@dataclass
class _Simulation:
    """A discrete-event simulation of clients calling a linearizable in-memory store."""

    rng: random.Random
    keys: list[str]
    mix: Mapping[str, float]
    info_rate: float
    fail_rate: float
    store: dict[str, str] = field(default_factory=dict)
    written: dict[str, list[str]] = field(default_factory=dict)
    events: list[tuple[int, int, int, object]] = field(default_factory=list)
    ops: list[Operation] = field(default_factory=list)
    serial: int = 0

    def schedule(self, when: int, kind: int, payload: object) -> None:
        """Queue an event; ties are broken by insertion order."""
        self.serial += 1
        heapq.heappush(self.events, (when, self.serial, kind, payload))

    def delay(self, low: int, high: int) -> int:
        """A random delay in nanoseconds."""
        return self.rng.randint(low, high)

    def new_call(self, client: str, now: int) -> _Call:
        """Choose the next operation of `client`, invoked at `now`."""
        kind = self.rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        key = self.rng.choice(self.keys)
        value = f"{client}-{self.serial}" if kind in ("store", "cas") else None
        expected = self.guess_expected(key) if kind == "cas" else None
        call = _Call(client, kind, key, value, expected, now)
        roll = self.rng.random()
        if roll < self.info_rate:
            call.outcome = self.rng.choice(("lost-request", "lost-reply"))
        elif roll < self.info_rate + self.fail_rate:
            call.outcome = "fail"
        return call

    def guess_expected(self, key: str) -> str | None:
        """A plausible cas expectation: a recent value of the key, or None (absent)."""
        recent = self.written.get(key, [])[-3:]
        if not recent or self.rng.random() < 0.2:
            return None
        return self.rng.choice(recent)

    def apply(self, call: _Call) -> None:
        """Run the call against the real dict and remember its result."""
        current = self.store.get(call.key)
        if call.op == "get":
            call.result = current
        elif call.op == "store":
            call.result = "saved" if current is None else "updated"
            self.write(call.key, call.value)
        elif call.op == "delete":
            call.result = self.store.pop(call.key, None) is not None
        else:
            call.result = current == call.expected
            if call.result:
                self.write(call.key, call.value)

    def write(self, key: str, value: str | None) -> None:
        """Set a key and keep a short list of its recent values."""
        assert value is not None
        self.store[key] = value
        self.written.setdefault(key, []).append(value)

    def invoke(self, client: str, now: int) -> None:
        """Start a new call: it takes effect later, then the reply arrives."""
        call = self.new_call(client, now)
        if call.outcome in ("fail", "lost-request"):
            self.schedule(now + self.delay(2_000, 40_000), _RESPOND, call)
        else:
            self.schedule(now + self.delay(0, 20_000), _APPLY, call)

    def respond(self, call: _Call, now: int) -> None:
        """Record the finished call and let its client think, then invoke again."""
        if call.outcome in ("lost-request", "lost-reply"):
            op = self.record(call, "info", None, None)
        elif call.outcome == "fail":
            op = self.record(call, "fail", None, now)
        else:
            op = self.record(call, "ok", call.result, now)
        self.ops.append(op)
        self.schedule(now + self.delay(0, 5_000), _INVOKE, call.client)

    def record(self, call: _Call, status: str, result: object, end: int | None) -> Operation:
        """Build the Operation the client would have written."""
        return Operation(
            client=call.client, op=call.op, key=call.key, value=call.value,
            expected=call.expected, result=result, status=status,  # type: ignore[arg-type]
            start=call.start, end=end,
        )

    def run(self, clients: int, operations: int) -> list[Operation]:
        """Simulate until `operations` calls have been recorded."""
        for n in range(clients):
            self.schedule(self.delay(0, 5_000), _INVOKE, f"c{n}")
        started = 0
        while len(self.ops) < operations:
            now, _, kind, payload = heapq.heappop(self.events)
            if kind == _INVOKE:
                if started < operations:
                    started += 1
                    self.invoke(payload, now)  # type: ignore[arg-type]
            elif kind == _APPLY:
                self.apply(payload)  # type: ignore[arg-type]
                self.schedule(now + self.delay(0, 20_000), _RESPOND, payload)
            else:
                self.respond(payload, now)  # type: ignore[arg-type]
        return self.ops


def synthetic_history(
    clients: int,
    operations: int,
    keys: int,
    seed: int,
    mix: Mapping[str, float] = DEFAULT_MIX,
    info_rate: float = 0.01,
    fail_rate: float = 0.01,
) -> list[Operation]:
    """A linearizable concurrent history of `operations` calls, deterministic for `seed`."""
    rng = random.Random(seed)
    names = [f"k{n}" for n in range(keys)]
    simulation = _Simulation(rng, names, mix, info_rate, fail_rate)
    return simulation.run(clients, operations)


@dataclass(frozen=True)
class CheckerCase:
    """One synthetic history to check: how many operations, by how many clients, over how many keys."""

    operations: int
    clients: int
    keys: int
    seed: int = 0


CHECKER_CASES = (CheckerCase(50_000, 8, 16), CheckerCase(50_000, 8, 1), CheckerCase(200_000, 8, 1))
"""The bench's cases: the usual spread over 16 keys, then every operation on one hot key."""
CASE_TIMEOUT = 900.0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB: VmHWM where /proc has it (getrusage's ru_maxrss keeps the
    peak of the process that exec'd this one, so a child of a large process would report the parent's), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure_case(case: CheckerCase, repeats: int) -> dict[str, object]:
    """Time check_operations on the case's history here (generation is not timed); peak memory before and after."""
    ops = synthetic_history(case.clients, case.operations, case.keys, case.seed)
    history_mb = peak_rss_mb()
    timings: list[float] = []
    verdict: bool | None = None
    for _ in range(repeats):
        began = time.perf_counter()
        verdict = check_operations(ops, initial="empty").linearizable
        timings.append(time.perf_counter() - began)
    return {
        **asdict(case), "seconds_median": statistics.median(timings), "seconds_all": timings, "linearizable": verdict,
        "peak_mb": round(peak_rss_mb(), 1), "history_peak_mb": round(history_mb, 1),
    }


def run_case(group: ProcessGroup, case: CheckerCase, repeats: int) -> dict[str, object]:
    """measure_case in a fresh process of `group`, so that the peak memory is the case's own."""
    argv = python_module(
        "kvmgr.tools.check_bench", "--operations", str(case.operations), "--clients", str(case.clients), "--keys", str(case.keys),
        "--seed", str(case.seed), "--repeats", str(repeats),
    )
    process = group.launch(argv)
    try:
        stdout, stderr = process.communicate(timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise KvmgrError(f"checking {case.operations:,} operations took over {CASE_TIMEOUT:g}s") from None
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        raise KvmgrError(f"checking {case.operations:,} operations failed: {lines[-1] if lines else process.returncode}")
    return json.loads(stdout)  # type: ignore[no-any-return]


def run_checker_benchmark(repeats: int = 3, cases: tuple[CheckerCase, ...] = CHECKER_CASES) -> dict[str, object]:
    """Measure every case, each in its own process; the first case's figures are also at the top level."""
    with ProcessGroup() as group:
        results = [run_case(group, case, repeats) for case in cases]
    return {**results[0], "cases": results}


def main(argv: list[str] | None = None) -> int:
    """python -m kvmgr.tools.check_bench: measure one case and print it as one line of JSON."""
    parser = argparse.ArgumentParser(prog="python -m kvmgr.tools.check_bench", description=measure_case.__doc__)
    for option, default in (("--operations", 50_000), ("--clients", 8), ("--keys", 16), ("--seed", 0), ("--repeats", 3)):
        parser.add_argument(option, type=int, default=default)
    args = parser.parse_args(argv)
    case = CheckerCase(args.operations, args.clients, args.keys, args.seed)
    print(json.dumps(measure_case(case, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
