"""The linearizability checker against a brute-force oracle, and on the classic anomalies."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmgr.errors import HistoryError
from kvmgr.protocol.values import is_number, same_value
from kvmgr.tools.check_bench import synthetic_history
from kvmgr.verify.check import ABSENT, CheckResult, check_file, check_operations, describe, describe_operation, step
from kvmgr.verify.history import Operation, operation_to_json

# --- building operations ---------------------------------------------------------------


def op(
    client: str,
    kind: str,
    key: str,
    start: int,
    end: int | None,
    result: object = None,
    value: object = None,
    expected: object = None,
    status: str = "ok",
    ttl: float | None = None,
) -> Operation:
    """A shorthand for one recorded operation."""
    return Operation(
        client=client, op=kind, key=key, value=value, expected=expected, result=result, status=status, start=start, end=end,  # type: ignore[arg-type]
        ttl=ttl,
    )


def store(client: str, key: str, value: str, start: int, end: int, result: str | None = "updated") -> Operation:
    """A completed store."""
    return op(client, "store", key, start, end, result, value=value)


def get(client: str, key: str, start: int, end: int, result: str | None) -> Operation:
    """A completed get."""
    return op(client, "get", key, start, end, result)


def delete(client: str, key: str, start: int, end: int, result: bool) -> Operation:
    """A completed delete."""
    return op(client, "delete", key, start, end, result)


def cas(client: str, key: str, expected: str | None, value: str, start: int, end: int, result: bool) -> Operation:
    """A completed compare-and-swap."""
    return op(client, "cas", key, start, end, result, value=value, expected=expected)


def info(kind: str, key: str, start: int, value: str | None = None, expected: str | None = None) -> Operation:
    """An operation whose outcome is unknown (the client timed out)."""
    return op("lost", kind, key, start, None, None, value=value, expected=expected, status="info")


def linearizable(*ops: Operation, initial: str = "empty") -> bool | None:
    """The checker's verdict on a handful of operations (keys start absent unless told)."""
    return check_operations(list(ops), initial=initial).linearizable


# --- the brute-force oracle: every order consistent with real time ---------------------


def oracle_apply(state: dict[str, object], operation: Operation) -> dict[str, object] | None:
    """Apply one operation to a whole map (values compared strictly); None if its recorded result is impossible."""
    current = state.get(operation.key)
    after = dict(state)
    kind, known, result = operation.op, operation.status == "ok", operation.result
    if kind == "get":
        return state if not known or same_value(result, current) else None
    if kind == "store":
        after[operation.key] = operation.value
        expected_result = "saved" if current is None else "updated"
        return after if not known or result in (None, expected_result) else None
    if kind == "delete":
        after.pop(operation.key, None)
        return after if not known or result == (current is not None) else None
    if kind == "add":
        if current is None:
            after[operation.key] = operation.value
        return after if not known or result is (current is None) else None
    if kind == "pop":
        after.pop(operation.key, None)
        return after if not known or same_value(result, current) else None
    if kind in ("incr", "decr"):
        return _oracle_count(state, operation, 0 if current is None else current)
    matches = current is None if operation.expected is None else same_value(current, operation.expected)
    if matches:
        after[operation.key] = operation.value
    return after if not known or result is matches else None


def _oracle_count(state: dict[str, object], operation: Operation, current: object) -> dict[str, object] | None:
    """An incr/decr: only on a number, to a finite result (else it changed nothing, and could not have completed)."""
    known = operation.status == "ok"
    if not is_number(current):
        return None if known else state
    by = operation.value
    new = current + by if operation.op == "incr" else current - by  # type: ignore[operator]
    if isinstance(new, float) and not math.isfinite(new):
        return None if known else state
    return {**state, operation.key: new} if not known or same_value(operation.result, new) else None


def _deltas(ops: list[Operation]) -> list[object]:
    """Every sum of a subset of the signed incr/decr deltas of ops (0 included)."""
    signed = [o.value if o.op == "incr" else -o.value for o in ops if o.op in ("incr", "decr")]  # type: ignore[operator]
    return [sum(chosen) for n in range(len(signed) + 1) for chosen in itertools.combinations(signed, n)]


def _mentioned(operation: Operation) -> list[object]:
    """The values an operation writes, expects or returns."""
    kind = operation.op
    found = [operation.value] if kind in ("store", "cas", "add") else []
    found += [operation.expected] if kind == "cas" else []
    found += [operation.result] if kind in ("get", "pop", "incr", "decr") else []
    return [value for value in found if value is not None]


def oracle_starts(ops: list[Operation]) -> list[object]:
    """Every first value worth trying for a key: absent (None), any value the history mentions, the numbers some
    subset of its increments leads from to a mentioned number, and values (a str, an int, a float) it never mentions."""
    mentioned = [v for o in ops for v in _mentioned(o)]
    numbers = [v - shift for v in mentioned if is_number(v) for shift in _deltas(ops)]  # type: ignore[operator]
    fresh = ["never-mentioned", 10**9 + 7, 1e6 + 0.25]
    starts: list[object] = [None]
    for value in [*mentioned, *numbers, *fresh]:
        if value is not None and not any(same_value(value, seen) for seen in starts):
            starts.append(value)
    return starts


def oracle(ops: list[Operation], initial: str = "empty") -> bool:
    """Try every order: ok ops all placed, info ops anywhere after their start or never, fail ops never.

    With initial "unknown", also try every starting value a key could have held (oracle_starts).
    """
    if initial == "unknown":
        keys = sorted({o.key for o in ops})
        per_key = [oracle_starts([o for o in ops if o.key == key]) for key in keys]
        return any(
            _oracle_from(ops, {key: value for key, value in zip(keys, choice, strict=True) if value is not None})
            for choice in itertools.product(*per_key)
        )
    return _oracle_from(ops, {})


def _oracle_from(ops: list[Operation], start: dict[str, object]) -> bool:
    """The brute-force search from the map `start`, remembering the (state, left, unused) already tried (by repr,
    which tells 1, 1.0 and True apart)."""
    required = [o for o in ops if o.status == "ok"]
    optional = [o for o in ops if o.status == "info"]
    everything = required + optional

    def placeable(candidate: Operation, remaining: frozenset[int]) -> bool:
        return all(everything[n] is candidate or everything[n].end >= candidate.start for n in remaining)  # type: ignore[operator]

    tried: set[tuple[str, frozenset[int], frozenset[int]]] = set()

    def search(state: dict[str, object], remaining: frozenset[int], spare: frozenset[int]) -> bool:
        if not remaining:
            return True
        memo = (repr(sorted(state.items())), remaining, spare)
        if memo in tried:
            return False
        tried.add(memo)
        for n in sorted(remaining | spare):
            candidate = everything[n]
            if not placeable(candidate, remaining):
                continue
            after = oracle_apply(state, candidate)
            if after is not None and search(after, remaining - {n}, spare - {n}):
                return True
        return False

    return search(dict(start), frozenset(range(len(required))), frozenset(range(len(required), len(everything))))


def oracle_first_bad_key(ops: list[Operation], initial: str = "empty") -> str | None:
    """The first key, in sorted order, whose own operations cannot be linearized."""
    for key in sorted({o.key for o in ops}):
        if not oracle([o for o in ops if o.key == key], initial):
            return key
    return None


# --- random small histories -------------------------------------------------------------

VALUES = ("a", "b", "c")


def random_operation(rng: random.Random, client: str, keys: list[str], start: int, end: int) -> Operation:
    """An operation with random arguments and a random (often impossible) result."""
    kind = rng.choice(("store", "get", "delete", "cas"))
    key = rng.choice(keys)
    status = rng.choices(("ok", "info", "fail"), weights=(8, 2, 1))[0]
    value = rng.choice(VALUES) if kind in ("store", "cas") else None
    expected = rng.choice((None, *VALUES)) if kind == "cas" else None
    results = {"store": ("saved", "updated"), "get": (None, *VALUES), "delete": (True, False), "cas": (True, False)}
    result = rng.choice(results[kind]) if status != "info" else None
    return op(client, kind, key, start, end if status != "info" else None, result, value, expected, status)


RICH_VALUES: tuple[object, ...] = ("a", b"a", 1, 1.0, True, 0, 2.5, (1,), [1], {"a": 1}, {"$bytes": "61"})
"""Values of every type, some equal under == but not the same (1, 1.0, True; "a" and b"a"; (1,) and [1])."""
DELTAS = (1, 2, 0.5, 1.0)
RICH_KINDS = ("store", "get", "delete", "cas", "incr", "decr", "add", "pop")


def rich_random_operation(rng: random.Random, client: str, keys: list[str], start: int, end: int) -> Operation:
    """Any operation (incr, decr, add and pop too) with values of every type and a random (often impossible) result."""
    kind = rng.choice(RICH_KINDS)
    status = rng.choices(("ok", "info", "fail"), weights=(8, 2, 1))[0]
    value = rng.choice(RICH_VALUES) if kind in ("store", "cas", "add") else rng.choice(DELTAS) if kind in ("incr", "decr") else None
    expected = rng.choice((None, *RICH_VALUES)) if kind == "cas" else None
    results: dict[str, tuple[object, ...]] = {
        "store": ("saved", "updated"), "get": (None, *RICH_VALUES), "pop": (None, *RICH_VALUES), "delete": (True, False),
        "cas": (True, False), "add": (True, False), "incr": (0, 1, 2, 3, 1.0, 1.5, 2.0), "decr": (-1, 0, -2, -1.0, -0.5, 0.5),
    }
    result = rng.choice(results[kind]) if status != "info" else None
    return op(client, kind, rng.choice(keys), start, end if status != "info" else None, result, value, expected, status)


def random_history(rng: random.Random, operation: Callable[..., Operation] = random_operation) -> list[Operation]:
    """Each client runs operations one after another with random, overlapping intervals."""
    keys = ["k1", "k2"][: rng.randint(1, 2)]
    clients = [f"c{n}" for n in range(rng.randint(2, 4))]
    ops, clock = [], {c: rng.randint(0, 5) for c in clients}
    for _ in range(rng.randint(1, 7)):
        client = rng.choice(clients)
        start = clock[client] + rng.randint(0, 4)
        end = start + rng.randint(0, 8)
        ops.append(operation(rng, client, keys, start, end))
        clock[client] = end + 1
    return ops


def mutate(rng: random.Random, ops: list[Operation]) -> list[Operation]:
    """Change one operation's result, timing or status."""
    ops = list(ops)
    index = rng.randrange(len(ops))
    target = ops[index]
    choice = rng.randrange(4)
    if choice == 0 and target.status == "ok":
        ops[index] = dataclasses.replace(target, result=_other_result(rng, target))
    elif choice == 1 and target.end is not None:
        start = max(0, target.start + rng.randint(-20_000, 20_000))
        ops[index] = dataclasses.replace(target, start=start, end=start + target.end - target.start)
    elif choice == 2 and target.status == "ok":
        ops[index] = dataclasses.replace(target, status="fail")
    else:
        ops[index] = dataclasses.replace(target, key=rng.choice(("k0", "k1")))
    return ops


def _other_result(rng: random.Random, target: Operation) -> object:
    """A different result of the same kind: saved/updated and true/false flipped, a number as the other type or one
    more, another value."""
    result = target.result
    if isinstance(result, bool):
        return not result
    if target.op == "store":
        return rng.choice([answer for answer in ("saved", "updated", None) if answer != result])
    if is_number(result):
        return float(result) if type(result) is int else result + 1  # type: ignore[operator]
    return rng.choice((None, "zzz", *VALUES, 1, True))


def simulated_history(seed: int) -> list[Operation]:
    """A small linearizable history from the simulation, with many info and fail ops."""
    rng = random.Random(seed)
    return synthetic_history(
        clients=rng.randint(2, 4), operations=rng.randint(1, 7), keys=rng.randint(1, 2), seed=seed,
        info_rate=0.2, fail_rate=0.1,
    )


def crowded_calls(rng: random.Random) -> list[tuple[int, int, str]]:
    """(start, end, client) of 6 to 11 calls by 3 to 5 clients, each client's calls in sequence, some long."""
    calls = []
    for n in range(rng.randint(3, 5)):
        clock = rng.randint(0, 4)
        for _ in range(rng.randint(1, 4)):
            length = rng.choice((0, 1, 2, 3, 5, 8, 40))
            calls.append((clock, clock + length, f"c{n}"))
            clock += length + rng.randint(1, 3)
    rng.shuffle(calls)
    return calls[: rng.randint(6, 11)]


def crowded_history(rng: random.Random) -> tuple[list[Operation], str | None]:
    """One key, overlapping calls run against a real register at a random point of each call; (ops, first value).

    Values come from a small pool, so some are read and some never are, some written twice; about a
    quarter of the calls lose their reply (info: taken effect or not), a few fail. The key may start
    with a value (then the history is linearizable only from an unknown start).
    """
    state: str | None = rng.choice((None, None, "a", "z"))
    first, ops, pool = state, [], ["a", "b", "c", "d"]
    for start, end, client in sorted(crowded_calls(rng), key=lambda c: rng.uniform(c[0], c[1])):
        kind = rng.choice(("store", "get", "get", "delete", "cas", "cas"))
        value = rng.choice(pool) if kind in ("store", "cas") else None
        expected = rng.choice((None, state, state, *pool)) if kind == "cas" else None
        status = rng.choices(("ok", "info", "fail"), weights=(14, 5, 1))[0]
        applied = status == "ok" or (status == "info" and rng.random() < 0.5)
        result: object = None
        if kind == "get":
            result = state
        elif kind == "store":
            result = "saved" if state is None else "updated"
        elif kind == "delete":
            result = state is not None
        else:
            result = state == expected
        if applied and (kind in ("store", "delete") or (kind == "cas" and result)):
            state = value
        pool.append(f"v{len(ops)}")
        shown = result if status == "ok" else None
        ops.append(op(client, kind, "k", start, end if status != "info" else None, shown, value, expected, status))
    return sorted(ops, key=lambda o: o.start), first


def real_outcome(state: object, kind: str, value: object, expected: object) -> tuple[object, object, bool]:
    """What a real key holding `state` (None: absent) answers to a call: (result, new state, completed); an incr or
    decr of a value that is not a number does not complete (WrongType)."""
    if kind == "get":
        return state, state, True
    if kind == "store":
        return ("saved" if state is None else "updated"), value, True
    if kind == "delete":
        return state is not None, None, True
    if kind == "pop":
        return state, None, True
    if kind == "add":
        return state is None, (value if state is None else state), True
    if kind == "cas":
        swapped = state is None if expected is None else same_value(state, expected)
        return swapped, (value if swapped else state), True
    current = 0 if state is None else state
    if not is_number(current):
        return None, state, False
    new = current + value if kind == "incr" else current - value  # type: ignore[operator]
    return new, new, True


def rich_crowded_history(rng: random.Random) -> tuple[list[Operation], object]:
    """As crowded_history, with every operation and values of every type, run against a real key with strict equality."""
    state: object = rng.choice((None, None, 1, "a", True, 1.0))
    first, ops, pool = state, [], list(RICH_VALUES)
    for start, end, client in sorted(crowded_calls(rng), key=lambda c: rng.uniform(c[0], c[1])):
        kind = rng.choice((*RICH_KINDS, "incr", "get"))
        value = rng.choice(DELTAS) if kind in ("incr", "decr") else rng.choice(pool) if kind in ("store", "cas", "add") else None
        expected = rng.choice((None, state, *pool)) if kind == "cas" else None
        status = rng.choices(("ok", "info", "fail"), weights=(14, 5, 1))[0]
        result, after, completed = real_outcome(state, kind, value, expected)
        if not completed:
            status = "fail" if status == "ok" else status
        if status == "ok" or (status == "info" and rng.random() < 0.5):
            state = after
        pool.append(rng.choice((len(ops), f"v{len(ops)}", (len(ops),))))
        shown = result if status == "ok" else None
        ops.append(op(client, kind, "k", start, end if status != "info" else None, shown, value, expected, status))
    return sorted(ops, key=lambda o: o.start), first


def null_store_results(rng: random.Random, ops: list[Operation]) -> list[Operation]:
    """Forget about half the completed stores' saved/updated answers (result None), as some systems never report them."""
    return [
        dataclasses.replace(o, result=None) if o.op == "store" and o.status == "ok" and rng.random() < 0.5 else o for o in ops
    ]


def small_histories() -> Iterator[tuple[str, list[Operation]]]:
    """Simulated, mutated and purely random small histories, and crowded ones run against a register."""
    rng = random.Random(20240601)
    for seed in range(150):
        yield f"simulated-{seed}", simulated_history(seed)
    for seed in range(150):
        yield f"mutated-{seed}", mutate(rng, simulated_history(1000 + seed))
    for seed in range(300):
        yield f"random-{seed}", random_history(rng)
    for seed in range(300):
        yield f"crowded-{seed}", crowded_history(rng)[0]
    for seed in range(300):
        yield f"crowded-mutated-{seed}", mutate(rng, crowded_history(rng)[0])
    for seed in range(100):
        yield f"null-stores-{seed}", null_store_results(rng, crowded_history(rng)[0])
    for seed in range(150):
        yield f"null-stores-mutated-{seed}", mutate(rng, null_store_results(rng, crowded_history(rng)[0]))
    for seed in range(300):
        yield f"rich-random-{seed}", random_history(rng, rich_random_operation)
    for seed in range(300):
        yield f"rich-crowded-{seed}", rich_crowded_history(rng)[0]
    for seed in range(300):
        yield f"rich-crowded-mutated-{seed}", mutate(rng, rich_crowded_history(rng)[0])


SMALL = list(small_histories())


def test_simulated_histories_are_linearizable_by_the_oracle() -> None:
    """The simulation only produces linearizable histories (checks the test's own generator)."""
    for name, ops in SMALL:
        if name.startswith("simulated"):
            assert oracle(ops), name


def test_crowded_histories_are_linearizable_from_their_real_start() -> None:
    """Run against a register, they are linearizable from the value it really started with (the generator's own check)."""
    rng = random.Random(7)
    for _ in range(100):
        ops, first = crowded_history(rng)
        assert oracle(ops, "empty" if first is None else "unknown")


def test_crowded_histories_with_every_operation_are_linearizable_from_their_real_start() -> None:
    """The same for every operation and values of every type (the generator's own check)."""
    rng = random.Random(8)
    for _ in range(100):
        ops, first = rich_crowded_history(rng)
        assert oracle(ops, "empty" if first is None else "unknown")


def test_random_histories_cover_both_verdicts() -> None:
    """The comparison below is only meaningful if both answers occur often, for every family of histories."""
    verdicts = [oracle(ops) for _, ops in SMALL]
    assert verdicts.count(True) >= 150
    assert verdicts.count(False) >= 150
    rich = [(name, oracle(ops)) for name, ops in SMALL if name.startswith("rich-")]
    assert sum(verdict for _, verdict in rich) >= 150 and sum(not verdict for _, verdict in rich) >= 150
    kinds = {o.op for name, ops in SMALL if name.startswith("rich-") for o in ops}
    assert kinds == set(RICH_KINDS)


@pytest.mark.parametrize("initial", ["empty", "unknown"])
@pytest.mark.parametrize(("name", "ops"), SMALL, ids=[name for name, _ in SMALL])
def test_checker_agrees_with_brute_force(name: str, ops: list[Operation], initial: str) -> None:
    """Same verdict as trying every order (from every possible start), and the same first offending key."""
    result = check_operations(ops, initial=initial)
    skipped = set(result.skipped_keys)  # only from an unknown start: an info incr/decr meeting a cas that failed on a number
    assert not skipped or (initial == "unknown" and all("incr/decr" in why for why in result.skipped_keys.values()))
    expected_key = oracle_first_bad_key([o for o in ops if o.key not in skipped], initial)
    assert result.linearizable is (expected_key is None), describe(result)
    assert result.key == expected_key
    assert result.operation_count == len(ops)
    if not result.linearizable:
        assert result.operations, "a failure names the operations involved"
        assert all(o.key == result.key for o in result.operations)
        assert set(map(id, result.unplaced)) <= set(map(id, result.operations))


def test_equal_timestamps_count_as_concurrent() -> None:
    """An operation ending exactly when another starts may still be ordered after it."""
    assert linearizable(store("a", "k", "v1", 0, 10, "saved"), get("b", "k", 10, 20, None))
    assert not linearizable(store("a", "k", "v1", 0, 10, "saved"), get("b", "k", 11, 20, None))
    assert oracle([store("a", "k", "v1", 0, 10, "saved"), get("b", "k", 10, 20, None)])


# --- the model step function ------------------------------------------------------------


def test_step_rules_of_the_register() -> None:
    """store/get/delete/cas against absent and present states."""
    assert step(ABSENT, store("a", "k", "v", 0, 1, "saved")) == (True, "v")
    assert step("x", store("a", "k", "v", 0, 1, "saved"))[0] is False
    assert step("x", store("a", "k", "v", 0, 1, "updated")) == (True, "v")
    assert step(ABSENT, get("a", "k", 0, 1, None)) == (True, ABSENT)
    assert step("x", get("a", "k", 0, 1, "y"))[0] is False
    assert step("x", delete("a", "k", 0, 1, True)) == (True, ABSENT)
    assert step(ABSENT, delete("a", "k", 0, 1, True))[0] is False
    assert step(ABSENT, cas("a", "k", None, "v", 0, 1, True)) == (True, "v")
    assert step("x", cas("a", "k", "x", "v", 0, 1, False))[0] is False
    assert step("x", cas("a", "k", "y", "v", 0, 1, False)) == (True, "x")
    assert step("x", info("cas", "k", 0, value="v", expected="x")) == (True, "v")
    assert step("x", info("delete", "k", 0)) == (True, ABSENT)


def test_a_store_whose_result_was_not_recorded_is_not_constrained() -> None:
    """Illegal only because of saved/updated: with those answers null (not recorded), the history is linearizable."""
    history = [store("a", "k", "v1", 0, 10, "saved"), store("b", "k", "v2", 20, 30, "saved"), get("c", "k", 40, 50, "v2")]
    assert not linearizable(*history)
    assert linearizable(*(dataclasses.replace(o, result=None) if o.op == "store" else o for o in history))
    assert not linearizable(store("a", "k", "v1", 0, 10, None), get("b", "k", 20, 30, None))  # it still writes its value
    assert step(ABSENT, store("a", "k", "v", 0, 1, None)) == (True, "v") and step("x", store("a", "k", "v", 0, 1, None)) == (True, "v")


def test_null_store_results_round_trip_through_a_history_file(tmp_path: Path) -> None:
    """A history file may say "result": null for a completed store; check_file reads and checks it."""
    path = tmp_path / "history.jsonl"
    history = [store("a", "k", "v1", 0, 10, None), store("b", "k", "v2", 20, 30, None), get("c", "k", 40, 50, "v2")]
    path.write_text("".join(operation_to_json(o) + "\n" for o in history))
    assert '"result": null' in path.read_text()
    assert check_file(path, initial="empty").outcome == "ok"


# --- classic anomalies --------------------------------------------------------------------


def test_stale_read() -> None:
    """A read after a completed overwrite returns the old value."""
    history = [store("a", "k", "v1", 0, 10, "saved"), store("a", "k", "v2", 20, 30), get("b", "k", 40, 50, "v1")]
    result = check_operations(history, initial="empty")
    assert not result.linearizable
    assert result.key == "k"
    assert history[2] in result.unplaced


def test_read_concurrent_with_overwrite_may_see_either_value() -> None:
    """The same read overlapping the overwrite is fine."""
    assert linearizable(store("a", "k", "v1", 0, 10, "saved"), store("a", "k", "v2", 20, 30), get("b", "k", 25, 50, "v1"))


def test_lost_update() -> None:
    """Two increments from the same value both succeed: one update was lost."""
    history = [
        store("a", "k", "0", 0, 5, "saved"),
        cas("a", "k", "0", "1", 10, 30, True),
        cas("b", "k", "0", "1b", 12, 28, True),
    ]
    assert not linearizable(*history)
    assert linearizable(*history[:2], dataclasses.replace(history[2], result=False))


def test_saved_when_the_key_existed() -> None:
    """store reports 'saved' (key absent) although an earlier store had completed."""
    assert not linearizable(store("a", "k", "v1", 0, 10, "saved"), store("b", "k", "v2", 20, 30, "saved"))
    assert linearizable(store("a", "k", "v1", 0, 10, "saved"), store("b", "k", "v2", 5, 30, "updated"))


def test_read_of_a_value_never_written() -> None:
    """A read returns a value nobody stored."""
    result = check_operations([store("a", "k", "v1", 0, 10, "saved"), get("b", "k", 20, 30, "ghost")])
    assert not result.linearizable
    assert "ghost" in describe(result)


def test_read_of_an_absent_key_before_any_write_is_fine() -> None:
    """Every key starts absent."""
    assert linearizable(get("a", "k", 0, 10, None), delete("a", "k", 20, 30, False))


def test_info_write_that_must_have_happened() -> None:
    """A later read sees the value of a write whose reply was lost."""
    lost = info("store", "k", 15, value="v2")
    history = [store("a", "k", "v1", 0, 10, "saved"), lost, get("b", "k", 30, 40, "v2")]
    assert linearizable(*history)
    assert not linearizable(history[0], history[2])


def test_info_write_that_may_never_have_happened() -> None:
    """Nobody ever sees the value of a write whose outcome is unknown: fine."""
    assert linearizable(store("a", "k", "v1", 0, 10, "saved"), info("store", "k", 15, value="v2"), get("b", "k", 30, 40, "v1"))


def test_info_write_cannot_take_effect_before_it_started() -> None:
    """A read that finished before the unknown write began cannot see it."""
    assert not linearizable(store("a", "k", "v1", 0, 10, "saved"), get("b", "k", 12, 14, "v2"), info("store", "k", 15, value="v2"))


def test_info_write_takes_effect_at_most_once() -> None:
    """Seen, then overwritten, then seen again: it would have to happen twice."""
    history = [
        info("store", "k", 0, value="v9"),
        get("b", "k", 10, 20, "v9"),
        store("a", "k", "v1", 30, 40, "updated"),
        get("b", "k", 50, 60, "v9"),
    ]
    assert not linearizable(*history)
    assert not oracle(history)


def test_info_cas_swaps_only_if_the_state_matched() -> None:
    """An unknown cas can explain a value only when its expectation held."""
    base = [store("a", "k", "v1", 0, 10, "saved"), get("b", "k", 50, 60, "v2")]
    assert linearizable(*base, info("cas", "k", 20, value="v2", expected="v1"))
    assert not linearizable(*base, info("cas", "k", 20, value="v2", expected="other"))


def test_info_get_is_ignored() -> None:
    """A read with unknown outcome constrains nothing."""
    assert linearizable(store("a", "k", "v1", 0, 10, "saved"), info("get", "k", 5), get("b", "k", 20, 30, "v1"))


def test_failed_operations_never_take_effect() -> None:
    """A store that certainly failed cannot explain a later read."""
    failed = op("a", "store", "k", 0, 10, None, value="v1", status="fail")
    assert not linearizable(failed, get("b", "k", 20, 30, "v1"))
    assert linearizable(failed, get("b", "k", 20, 30, None))


def test_cas_that_swapped_when_it_could_not() -> None:
    """cas reports a swap although the current value differs from the expectation."""
    assert not linearizable(store("a", "k", "v1", 0, 10, "saved"), cas("b", "k", "v0", "v2", 20, 30, True))
    assert not linearizable(cas("b", "k", "v0", "v2", 20, 30, True))
    assert linearizable(cas("b", "k", None, "v2", 20, 30, True))


def test_cas_that_failed_when_it_should_have_swapped() -> None:
    """cas reports no swap although nothing else could have changed the value."""
    assert not linearizable(store("a", "k", "v1", 0, 10, "saved"), cas("b", "k", "v1", "v2", 20, 30, False))


def test_delete_true_on_an_absent_key() -> None:
    """delete claims it removed a key that was never stored."""
    assert not linearizable(delete("a", "k", 0, 10, True))
    assert not linearizable(store("a", "k", "v", 0, 5, "saved"), delete("a", "k", 10, 20, True), delete("b", "k", 30, 40, True))


def test_concurrent_operations_that_fit_in_one_order_only() -> None:
    """Both reads overlap the store: the empty read must come first, the other after the store."""
    history = [store("a", "k", "v1", 0, 100, "saved"), get("b", "k", 10, 90, "v1"), get("c", "k", 20, 30, None)]
    assert linearizable(*history)
    assert not linearizable(*history, get("d", "k", 120, 130, None))
    ordered = [get("c", "k", 20, 30, None), get("b", "k", 40, 90, "v1"), get("e", "k", 95, 99, None)]
    assert not linearizable(history[0], *ordered)


def test_keys_are_independent_and_the_first_bad_key_is_reported() -> None:
    """Each key is a register of its own; the report names the first bad key in sorted order."""
    history = [
        store("a", "b-key", "x", 0, 10, "saved"), get("a", "b-key", 20, 30, "y"),
        store("a", "a-key", "x", 0, 10, "saved"), get("a", "a-key", 20, 30, "x"),
        delete("a", "c-key", 0, 10, True),
    ]
    result = check_operations(history)
    assert (result.linearizable, result.key, result.checked_keys) == (False, "b-key", 2)


# --- larger histories ----------------------------------------------------------------------


def test_synthetic_history_is_linearizable() -> None:
    """2,000 simulated operations from 8 clients on 16 keys."""
    ops = synthetic_history(clients=8, operations=2000, keys=16, seed=7)
    result = check_operations(ops)
    assert result.linearizable, describe(result)
    assert (result.operation_count, result.checked_keys) == (2000, 16)
    assert {o.status for o in ops} == {"ok", "info", "fail"}


def test_synthetic_history_is_deterministic() -> None:
    """The same seed gives the same history."""
    assert synthetic_history(4, 200, 4, seed=3) == synthetic_history(4, 200, 4, seed=3)
    assert synthetic_history(4, 200, 4, seed=3) != synthetic_history(4, 200, 4, seed=4)


def test_synthetic_history_with_a_read_of_a_never_written_value() -> None:
    """Changing one read's result to a value nobody wrote is caught, on that read's key."""
    ops = synthetic_history(clients=8, operations=2000, keys=16, seed=7)
    index = max(n for n, o in enumerate(ops) if o.op == "get" and o.status == "ok" and n < 1500)
    ops[index] = dataclasses.replace(ops[index], result="never-written")
    result = check_operations(ops, initial="empty")
    assert not result.linearizable
    assert result.key == ops[index].key
    assert ops[index] in result.unplaced
    text = describe(result)
    assert text.splitlines()[0] == f"NOT linearizable: key {ops[index].key!r}"
    assert "never-written" in text


def test_check_file_and_describe(tmp_path: Path) -> None:
    """check_file reads and validates a JSON-lines history."""
    path = tmp_path / "history.jsonl"
    history = [store("a", "k", "v1", 0, 10, "saved"), get("b", "k", 20, 30, "v1")]
    path.write_text("".join(operation_to_json(o) + "\n" for o in history))
    result = check_file(path)
    assert result == CheckResult(True, None, [], 1, 2)
    assert describe(result) == "linearizable: 2 operations on 1 keys"


def test_check_file_rejects_malformed_and_missing_files(tmp_path: Path) -> None:
    """Malformed input raises HistoryError naming the file."""
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n")
    with pytest.raises(HistoryError, match=r"bad\.jsonl:1"):
        check_file(path)
    with pytest.raises(HistoryError, match=r"missing\.jsonl"):
        check_file(tmp_path / "missing.jsonl")


def test_describe_lists_the_offending_operations() -> None:
    """One line per operation, with client, op, key, arguments, result, status and times."""
    history = [store("alice", "foo", "v1", 1712, 1790, "saved"), cas("bob", "foo", "v0", "v2", 1800, 1850, True)]
    lines = describe(check_operations(history)).splitlines()
    assert lines[0] == "NOT linearizable: key 'foo'"
    offending = [line for line in lines if "bob" in line]
    assert offending and offending[0].lstrip().startswith("!")
    for part in ("cas", "'foo'", "expected='v0'", "value='v2'", "True", "ok", "1800", "1850"):
        assert part in offending[0]


# --- the new operations and values of every type ---------------------------------------------


def incr(client: str, key: str, by: object, start: int, end: int, result: object, kind: str = "incr") -> Operation:
    """A completed incr (or decr)."""
    return op(client, kind, key, start, end, result, value=by)


def test_values_are_compared_strictly() -> None:
    """1, 1.0 and True are three values: a read of one after a store of another is illegal, and so is such a cas."""
    for stored, read in [(1, True), (1, 1.0), (True, 1.0), ("a", b"a"), ((1,), [1]), ({"a": 1}, {"a": True})]:
        assert not linearizable(store("a", "k", stored, 0, 1, "saved"), get("b", "k", 2, 3, read)), (stored, read)  # type: ignore[arg-type]
        assert linearizable(store("a", "k", stored, 0, 1, "saved"), get("b", "k", 2, 3, stored))  # type: ignore[arg-type]
        assert not linearizable(store("a", "k", stored, 0, 1, "saved"), cas("b", "k", read, "x", 2, 3, True))  # type: ignore[arg-type]
    assert linearizable(store("a", "k", {"a": 1, "b": 2}, 0, 1, "saved"), get("b", "k", 2, 3, {"b": 2, "a": 1}))  # type: ignore[arg-type]


def test_incr_counts_from_absent_and_only_on_numbers() -> None:
    """An absent key counts as 0; int + int stays int, a float makes a float; an ok incr on a str is illegal."""
    assert linearizable(incr("a", "k", 1, 0, 1, 1), incr("a", "k", 2, 2, 3, 3), incr("b", "k", 0.5, 4, 5, 2.5, "decr"))
    assert not linearizable(incr("a", "k", 1, 0, 1, 1.0))  # the new number is an int
    assert not linearizable(incr("a", "k", 1, 0, 1, 1), incr("a", "k", 1, 2, 3, 1))  # a lost update
    assert not linearizable(store("a", "k", "1", 0, 1, "saved"), incr("b", "k", 1, 2, 3, 2))
    assert not linearizable(store("a", "k", True, 0, 1, "saved"), incr("b", "k", 1, 2, 3, 2))  # a bool is no number
    failed = op("b", "incr", "k", 2, 3, None, value=1, status="fail")  # WrongType: it changed nothing
    assert linearizable(store("a", "k", "1", 0, 1, "saved"), failed, get("c", "k", 4, 5, "1"))
    assert linearizable(incr("a", "k", 1, 0, 10, 1), incr("b", "k", 1, 0, 10, 2), get("c", "k", 11, 12, 2))
    lost = op("c", "incr", "k", 0, None, None, value=5, status="info")
    assert linearizable(incr("a", "k", 1, 0, 1, 1), lost, get("b", "k", 20, 21, 6))
    assert not linearizable(incr("a", "k", 1, 0, 1, 1), lost, get("b", "k", 20, 21, 11))  # it happens at most once


def test_incr_from_an_unknown_start_needs_a_number_that_gives_its_result() -> None:
    """From an unknown start an incr's result says what the key held; a failed cas can rule that out."""
    assert linearizable(incr("a", "k", 1, 0, 1, 8), initial="unknown")
    assert linearizable(incr("a", "k", 0.5, 0, 1, 8.5), initial="unknown")
    assert not linearizable(incr("a", "k", 0.5, 0, 1, 8), initial="unknown")  # a float in, an int out
    assert not linearizable(cas("b", "k", 7, "x", 0, 1, False), incr("a", "k", 1, 2, 3, 8), get("c", "k", 4, 5, 8), initial="unknown")
    assert linearizable(cas("b", "k", 7.0, "x", 0, 1, False), incr("a", "k", 1, 2, 3, 8), initial="unknown")  # type: ignore[arg-type]


def test_add_and_pop() -> None:
    """add stores only into an absent key; pop returns the value (null: absent) and leaves the key absent."""
    add_ok, add_no = op("a", "add", "k", 0, 1, True, value=1), op("b", "add", "k", 2, 3, False, value=2)
    assert linearizable(add_ok, add_no, get("c", "k", 4, 5, 1))
    assert not linearizable(add_ok, dataclasses.replace(add_no, result=True))
    pop_one, pop_none = op("c", "pop", "k", 4, 5, 1), op("d", "pop", "k", 6, 7, None)
    assert linearizable(add_ok, pop_one, pop_none, dataclasses.replace(add_no, start=8, end=9, result=True))
    assert not linearizable(add_ok, dataclasses.replace(pop_one, result=True))
    assert not linearizable(add_ok, pop_one, dataclasses.replace(pop_none, result=1))  # popped twice


def test_keys_that_use_expiry_are_left_out_and_named() -> None:
    """A store or add with a ttl, an expire or a persist puts its key out of the check, saying why; the rest is checked."""
    history = [
        op("a", "store", "ttl-key", 0, 1, "saved", value="v", ttl=1.5), get("b", "ttl-key", 2000, 2001, None),
        op("a", "expire", "e", 0, 1, False, ttl=3.0), op("a", "persist", "p", 0, 1, False),
        store("a", "plain", "v", 0, 1, "saved"), get("b", "plain", 2, 3, "v"),
    ]
    result = check_operations(history, initial="empty")
    assert (result.linearizable, result.checked_keys, result.operation_count) == (True, 1, 6)
    assert result.skipped_keys == {
        "e": "an expire: expiry is outside the model", "p": "a persist: expiry is outside the model",
        "ttl-key": "a store with a ttl: expiry is outside the model",
    }
    assert describe(result).splitlines() == [
        "linearizable: 6 operations on 1 keys",
        "3 keys left out of the check ('e': an expire: expiry is outside the model; 'p': a persist: expiry is outside the "
        "model; 'ttl-key': a store with a ttl: expiry is outside the model)",
    ]
    bad = check_operations([*history, get("c", "plain", 4, 5, "w")], initial="empty")
    assert bad.linearizable is False and bad.key == "plain" and describe(bad).endswith(bad.skipped_note)


def test_describe_shows_the_new_operations() -> None:
    """by= for incr/decr, value= for add, ttl= where given."""
    assert "incr key='k' by=2 -> 5 [ok]" in describe_operation(incr("a", "k", 2, 0, 1, 5))
    assert "add key='k' value=(1,) ttl=2.5 -> True" in describe_operation(op("a", "add", "k", 0, 1, True, value=(1,), ttl=2.5))
