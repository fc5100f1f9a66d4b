"""The linearizability checker against a brute-force oracle, and on the classic anomalies."""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmgr.errors import HistoryError
from kvmgr.tools.check_bench import synthetic_history
from kvmgr.verify.check import ABSENT, CheckResult, check_file, check_operations, describe, step
from kvmgr.verify.history import Operation, operation_to_json

# --- building operations ---------------------------------------------------------------


def op(
    client: str,
    kind: str,
    key: str,
    start: int,
    end: int | None,
    result: object = None,
    value: str | None = None,
    expected: str | None = None,
    status: str = "ok",
) -> Operation:
    """A shorthand for one recorded operation."""
    return Operation(
        client=client, op=kind, key=key, value=value, expected=expected, result=result, status=status, start=start, end=end,  # type: ignore[arg-type]
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


def oracle_apply(state: dict[str, str], operation: Operation) -> dict[str, str] | None:
    """Apply one operation to a whole map; None if its recorded result is impossible."""
    current = state.get(operation.key)
    after = dict(state)
    kind, known = operation.op, operation.status == "ok"
    matches = current is None if operation.expected is None else current == operation.expected
    if kind == "get":
        return state if not known or operation.result == current else None
    if kind == "store":
        after[operation.key] = operation.value  # type: ignore[assignment]
        expected_result = "saved" if current is None else "updated"
        return after if not known or operation.result in (None, expected_result) else None
    if kind == "delete":
        after.pop(operation.key, None)
        return after if not known or operation.result == (current is not None) else None
    if matches:
        after[operation.key] = operation.value  # type: ignore[assignment]
    return after if not known or operation.result == matches else None


def oracle(ops: list[Operation], initial: str = "empty") -> bool:
    """Try every order: ok ops all placed, info ops anywhere after their start or never, fail ops never.

    With initial "unknown", also try every starting value a key could have held: absent, any value
    the history mentions, or one it never mentions.
    """
    if initial == "unknown":
        mentioned = {v for o in ops for v in (o.value, o.expected, o.result) if isinstance(v, str | bytes)}
        starts = [{}] + [{o.key: v for o in ops} for v in (*mentioned, "never-mentioned")]
        return any(_oracle_from(ops, start) for start in starts)
    return _oracle_from(ops, {})


def _oracle_from(ops: list[Operation], start: dict) -> bool:
    """The brute-force search from the map `start`, remembering the (state, left, unused) already tried."""
    required = [o for o in ops if o.status == "ok"]
    optional = [o for o in ops if o.status == "info"]
    everything = required + optional

    def placeable(candidate: Operation, remaining: frozenset[int]) -> bool:
        return all(everything[n] is candidate or everything[n].end >= candidate.start for n in remaining)  # type: ignore[operator]

    @functools.cache
    def search(state: frozenset, remaining: frozenset[int], spare: frozenset[int]) -> bool:
        if not remaining:
            return True
        for n in sorted(remaining | spare):
            candidate = everything[n]
            if not placeable(candidate, remaining):
                continue
            after = oracle_apply(dict(state), candidate)
            if after is not None and search(frozenset(after.items()), remaining - {n}, spare - {n}):
                return True
        return False

    return search(frozenset(start.items()), frozenset(range(len(required))), frozenset(range(len(required), len(everything))))


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


def random_history(rng: random.Random) -> list[Operation]:
    """Each client runs operations one after another with random, overlapping intervals."""
    keys = ["k1", "k2"][: rng.randint(1, 2)]
    clients = [f"c{n}" for n in range(rng.randint(2, 4))]
    ops, clock = [], {c: rng.randint(0, 5) for c in clients}
    for _ in range(rng.randint(1, 7)):
        client = rng.choice(clients)
        start = clock[client] + rng.randint(0, 4)
        end = start + rng.randint(0, 8)
        ops.append(random_operation(rng, client, keys, start, end))
        clock[client] = end + 1
    return ops


def mutate(rng: random.Random, ops: list[Operation]) -> list[Operation]:
    """Change one operation's result, timing or status."""
    ops = list(ops)
    index = rng.randrange(len(ops))
    target = ops[index]
    choice = rng.randrange(4)
    if choice == 0 and target.status == "ok":
        flips = {"saved": "updated", "updated": "saved", True: False, False: True}
        new_result = flips.get(target.result, rng.choice((None, "zzz", *VALUES)))  # type: ignore[arg-type]
        ops[index] = dataclasses.replace(target, result=new_result)
    elif choice == 1 and target.end is not None:
        start = max(0, target.start + rng.randint(-20_000, 20_000))
        ops[index] = dataclasses.replace(target, start=start, end=start + target.end - target.start)
    elif choice == 2 and target.status == "ok":
        ops[index] = dataclasses.replace(target, status="fail")
    else:
        ops[index] = dataclasses.replace(target, key=rng.choice(("k0", "k1")))
    return ops


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


def test_random_histories_cover_both_verdicts() -> None:
    """The comparison below is only meaningful if both answers occur often."""
    verdicts = [oracle(ops) for _, ops in SMALL]
    assert verdicts.count(True) >= 150
    assert verdicts.count(False) >= 150


@pytest.mark.parametrize("initial", ["empty", "unknown"])
@pytest.mark.parametrize(("name", "ops"), SMALL, ids=[name for name, _ in SMALL])
def test_checker_agrees_with_brute_force(name: str, ops: list[Operation], initial: str) -> None:
    """Same verdict as trying every order (from every possible start), and the same first offending key."""
    result = check_operations(ops, initial=initial)
    expected_key = oracle_first_bad_key(ops, initial)
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
