"""Synthetic concurrent histories and a benchmark of the linearizability checker."""

from __future__ import annotations

import heapq
import random
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvmgr.check import check_operations
from kvmgr.history import Operation

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


def run_checker_benchmark(
    operations: int = 50_000, clients: int = 8, keys: int = 16, seed: int = 0, repeats: int = 3
) -> dict[str, object]:
    """Time check_operations on a synthetic history (generation is not timed)."""
    ops = synthetic_history(clients, operations, keys, seed)
    timings, verdict = [], True
    for _ in range(repeats):
        began = time.perf_counter()
        verdict = check_operations(ops).linearizable
        timings.append(time.perf_counter() - began)
    return {
        "operations": operations,
        "clients": clients,
        "keys": keys,
        "seconds_median": statistics.median(timings),
        "seconds_all": timings,
        "linearizable": verdict,
    }


if __name__ == "__main__":
    print(run_checker_benchmark())
