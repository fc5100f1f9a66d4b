"""The search works for any model: a counter (add/read) defined here, with no prunings, against a brute-force oracle."""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from kvmgr.verify import search
from kvmgr.verify.history import Operation
from kvmgr.verify.model import Model, Part, Pruning
from kvmgr.verify.register import KeyRegister, State


@dataclass(frozen=True)
class Call:
    """A counter operation: add `amount`, or read (`result` what it returned); end None when the outcome is unknown."""

    kind: str
    amount: int
    result: int | None
    start: int
    end: int | None


class Counter:
    """A counter starting at 0; reads must return its value. Offers no pruning."""

    def init(self) -> tuple[int]:
        """It starts at 0."""
        return (0,)

    def step(self, state: int, op: Call) -> tuple[bool, int]:
        """add always works; a read works when it returned the value."""
        if op.kind == "add":
            return True, state + op.amount
        return op.result == state, state

    def partition(self, ops: Sequence[Call]) -> list[Part[Call]]:
        """One part; reads of unknown outcome constrain nothing."""
        done = sorted((op for op in ops if op.end is not None), key=lambda op: op.start)
        pending = sorted((op for op in ops if op.end is None and op.kind == "add"), key=lambda op: op.start)
        return [Part("counter", done, pending)]

    def pruning(self, part: Part[Call], initial: int) -> Pruning[int, Call] | None:
        """None: the plain search."""
        return None


def add(amount: int, start: int, end: int | None) -> Call:
    """An add (end None: its outcome is unknown)."""
    return Call("add", amount, None, start, end)


def read(result: int, start: int, end: int) -> Call:
    """A read that returned `result`."""
    return Call("read", 0, result, start, end)


def verdict(*ops: Call) -> str:
    """The search's answer for a counter history."""
    return search.check(Counter(), list(ops)).verdict


def test_counter_histories_ok_and_illegal() -> None:
    """Concurrent adds may be seen in any order; a read of a sum no order gives is illegal."""
    assert verdict(add(1, 0, 10), add(2, 0, 10), read(2, 5, 15), read(3, 20, 30)) == "ok"
    assert verdict(add(1, 0, 10), add(2, 0, 10), read(4, 5, 15)) == "illegal"
    assert verdict(add(1, 0, 10), read(1, 20, 30), read(0, 40, 50)) == "illegal"  # a stale read


def test_unknown_outcomes_may_or_may_not_have_happened() -> None:
    """An add whose reply was lost may explain a later read, or never have happened; but not happen twice."""
    assert verdict(add(5, 0, None), read(5, 10, 20)) == "ok"
    assert verdict(add(5, 0, None), read(0, 10, 20)) == "ok"
    assert verdict(add(5, 10, None), read(5, 0, 5)) == "illegal"  # it started after the read returned
    assert verdict(add(5, 0, None), read(5, 10, 20), read(10, 30, 40)) == "illegal"


def test_an_illegal_part_reports_its_deepest_point() -> None:
    """The search of the failing part is returned, with what it could place."""
    outcome = search.check(Counter(), [add(1, 0, 10), read(1, 20, 30), read(0, 40, 50)])
    assert (outcome.verdict, outcome.parts) == ("illegal", 1)
    assert outcome.search is not None
    deepest = outcome.search.deepest()
    assert [(op.kind, state) for op, state in deepest.order] == [("add", 1), ("read", 1)]
    assert deepest.left == [2]


def test_the_time_limit_answers_unknown() -> None:
    """Many lost adds and a read no subset explains: exponential without prunings, so the limit comes first."""
    ops = [add(1 << n, 0, None) for n in range(30)] + [read(-1, 1, 2)]
    assert search.check(Counter(), ops, timeout=0.2).verdict == "unknown"


def test_the_register_is_a_model_too() -> None:
    """The key register satisfies the same protocol, and the search checks its histories per key."""
    model: Model[State, Operation] = KeyRegister("empty")
    ops = [
        Operation(client="a", op="store", key="k", value="1", expected=None, result="saved", status="ok", start=0, end=1),
        Operation(client="b", op="get", key="k", value=None, expected=None, result="2", status="ok", start=2, end=3),
    ]
    assert search.check(model, ops).verdict == "illegal"
    assert search.check(model, ops[:1]).verdict == "ok"


# --- against a brute-force oracle: every order consistent with real time ----------------------------


def oracle(ops: list[Call]) -> bool:
    """Try every order: completed calls all placed, lost adds anywhere after their start or never."""
    required = [op for op in ops if op.end is not None]
    optional = [op for op in ops if op.end is None and op.kind == "add"]
    everything = required + optional

    @functools.cache
    def go(state: int, remaining: frozenset[int], spare: frozenset[int]) -> bool:
        if not remaining:
            return True
        for n in remaining | spare:
            op = everything[n]
            if any(everything[m].end < op.start for m in remaining if m != n):  # type: ignore[operator]
                continue
            ok, after = Counter().step(state, op)
            if ok and go(after, remaining - {n}, spare - {n}):
                return True
        return False

    return go(0, frozenset(range(len(required))), frozenset(range(len(required), len(everything))))


def random_counter_history(rng: random.Random) -> list[Call]:
    """A few clients, each calling one after another; reads return plausible (often impossible) sums."""
    ops, clocks = [], [rng.randint(0, 3) for _ in range(rng.randint(2, 3))]
    for _ in range(rng.randint(1, 6)):
        client = rng.randrange(len(clocks))
        start = clocks[client] + rng.randint(0, 3)
        end = start + rng.randint(0, 6)
        if rng.random() < 0.5:
            ops.append(add(rng.choice((1, 2)), start, None if rng.random() < 0.25 else end))
        else:
            ops.append(read(rng.randint(0, 4), start, end))
        clocks[client] = end + 1
    return ops


HISTORIES = list(itertools.islice((random_counter_history(random.Random(seed)) for seed in itertools.count()), 200))


def test_random_counter_histories_cover_both_verdicts() -> None:
    """The comparison below is only meaningful if both answers occur often."""
    answers = [oracle(ops) for ops in HISTORIES]
    assert answers.count(True) >= 40 and answers.count(False) >= 40


@pytest.mark.parametrize("seed", range(len(HISTORIES)))
def test_the_plain_search_agrees_with_brute_force(seed: int) -> None:
    """With no pruning offered, the search gives the oracle's answer."""
    ops = HISTORIES[seed]
    assert (verdict(*ops) == "ok") is oracle(ops), ops
