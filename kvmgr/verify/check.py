"""Linearizability checker for key-value histories: the key register model searched by the generic search.

The model (kvmgr/verify/register.py) says what a key's operations do and offers the prunings that
make the search fast; the search (kvmgr/verify/search.py) is Wing & Gong's, as in Lowe's and
Porcupine's checkers, and works for any model (kvmgr/verify/model.py). This module is the public
entry: check_operations and check_file answer ok, illegal or unknown (CheckResult.outcome) and, for a
failure, name the first bad key and the operations worth looking at (describe).

Expiry is outside the model: a key whose history holds a store or add given a ttl, an expire or a persist is
left out of the check, and CheckResult.skipped_keys says which and why (so does describe). So is, from an
unknown start only, a key where an incr/decr of unknown outcome meets a cas that failed expecting a number:
there the unknown first value cannot stand in for the incr (see register._step_unknown).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kvmgr.protocol.values import is_number
from kvmgr.verify import search as _search
from kvmgr.verify.history import COUNTS, Operation, read_history
from kvmgr.verify.register import (
    ABSENT,
    INITIAL_STATES,
    KeyRegister,
    RegisterPruning,
    State,
    Unknown,
    needed_state,
    partition_by_key,
    plain_state,
    step,
)
from kvmgr.verify.search import PROGRESS_EVERY, SEEN_LIMIT, CheckProgress, Deepest, Progress, Search

__all__ = [
    "ABSENT", "CHECK_TIMEOUT", "INITIAL_STATES", "PROGRESS_EVERY", "SEEN_LIMIT", "CheckProgress", "CheckResult", "KeyOrder", "Progress",
    "Unknown", "check_file", "check_operations", "describe", "describe_operation", "partition_by_key", "skipped_keys", "step",
]

CHECK_TIMEOUT = 60.0
"""The time limit the tools (the driver, kvmgr stress) give a check by default, in seconds."""
OUTCOMES = {True: "ok", False: "illegal", None: "unknown"}
"""CheckResult.outcome for each value of CheckResult.linearizable."""

@dataclass
class CheckResult:
    """The verdict (None: unknown, the time limit came first), and for a failure the key and the operations worth looking at."""

    linearizable: bool | None
    key: str | None
    operations: list[Operation]
    checked_keys: int
    operation_count: int
    unplaced: list[Operation] = field(default_factory=list)
    detail: str = ""
    skipped_keys: dict[str, str] = field(default_factory=dict)
    """Keys left out of the check (expiry is outside the model), each with why, in sorted order."""
    orders: dict[str, KeyOrder] = field(default_factory=dict)
    """Only when check_operations is given orders=True: each key checked, in order, with the order the search found
    (for the last key of a failure or a time-out, the longest prefix it could order)."""

    @property
    def verdict(self) -> str:
        """'yes', 'NO' or 'unknown', as tables show it."""
        return {True: "yes", False: "NO", None: "unknown"}[self.linearizable]


    @property
    def outcome(self) -> str:
        """'ok', 'illegal' or 'unknown' (the time limit came first), as Porcupine answers."""
        return OUTCOMES[self.linearizable]

    @property
    def skipped_note(self) -> str:
        """One line naming the keys left out and why ('' if none), for a tool's row."""
        if not self.skipped_keys:
            return ""
        shown = "; ".join(f"{key!r}: {why}" for key, why in list(self.skipped_keys.items())[:SHOWN_SKIPPED])
        more = len(self.skipped_keys) - SHOWN_SKIPPED
        count = len(self.skipped_keys)
        return f"{count} key{'s' if count > 1 else ''} left out of the check ({shown}{f'; and {more} more' if more > 0 else ''})"


@dataclass(frozen=True, kw_only=True)
class KeyOrder:
    """One key's linearization as the search found it: the operations placed, in order, each with the key's state after
    it (plain values: ABSENT, an Unknown, or a value); `complete` says whether every completed operation was placed
    (else this is the longest prefix ordered). Unknown-outcome operations appear only where they took effect, failed
    ones never; `unplaced`: for a failure, the operations none of which could come next (CheckResult.unplaced)."""

    key: str
    initial: object
    order: tuple[Operation, ...]
    states: tuple[object, ...]
    complete: bool
    unplaced: tuple[Operation, ...] = ()


def _key_order(search: KeySearch, complete: bool, unplaced: list[Operation] | None = None) -> KeyOrder:
    """The order a key's search reached (the deepest point), its states replayed on the recorded operations."""
    deepest = search.deepest()
    order = tuple(op for op, _ in deepest.order)
    state: object = deepest.initial if isinstance(deepest.initial, Unknown) else plain_state(deepest.initial)
    states: list[object] = []
    for op in order:
        state = step(state, op)[1]
        states.append(state)
    return KeyOrder(
        key=search.part.name, initial=deepest.initial, order=order, states=tuple(states), complete=complete,
        unplaced=tuple(unplaced or ()),
    )


SHOWN_SKIPPED = 5
"""How many left-out keys skipped_note names."""
EXPIRY_REASON = {
    "store": "a store with a ttl", "add": "an add with a ttl", "expire": "an expire", "persist": "a persist",
}
OUTSIDE_THE_MODEL = "expiry is outside the model"
UNKNOWN_COUNT_REASON = (
    "an incr/decr of unknown outcome and a cas that failed expecting a number, from an unknown start: outside the model"
)


def skipped_keys(ops: list[Operation], initial: str = "empty") -> dict[str, str]:
    """The keys the check leaves out, in sorted order, each with why: those whose history uses expiry, and from an
    unknown start those where an incr/decr of unknown outcome meets a cas that failed expecting a number."""
    reasons: dict[str, str] = {}
    counted: set[str] = set()
    excluding: set[str] = set()
    for op in ops:
        if op.uses_expiry and op.key not in reasons:
            reasons[op.key] = f"{EXPIRY_REASON[op.op]}: {OUTSIDE_THE_MODEL}"
        elif op.op in COUNTS and op.status == "info":
            counted.add(op.key)
        elif op.op == "cas" and op.status == "ok" and op.result is False and is_number(op.expected):
            excluding.add(op.key)
    if initial == "unknown":
        for key in counted & excluding:
            reasons.setdefault(key, UNKNOWN_COUNT_REASON)
    return dict(sorted(reasons.items()))


KeySearch = Search[State, Operation]


def _unplaced(search: KeySearch, deepest: Deepest[State, Operation]) -> list[Operation]:
    """The completed operations that were candidates at the deepest point (none of them could be placed), and those
    still waiting to read the state there, which none of the candidates could leave for that reason."""
    done, state = search.part.done, deepest.state
    if not deepest.left:
        return []
    window = min(done[i].end for i in deepest.left)  # type: ignore[type-var]
    chosen = [
        i for i in deepest.left
        if done[i].start <= window or (state is not ABSENT and needed_state(search.done[i]) == state)  # type: ignore[operator]
    ]
    return [done[i] for i in chosen]


def _real_state(search: KeySearch, deepest: Deepest[State, Operation]) -> str:
    """Show the state, undoing the unread-value abstraction via the last write."""
    pruning, state, order = search.pruning, deepest.state, deepest.order
    if not isinstance(pruning, RegisterPruning) or state != pruning.unread:
        return _show_state(state)
    for n in range(len(order) - 1, -1, -1):
        op, after = order[n]
        before = order[n - 1][1] if n else deepest.initial
        if after == pruning.unread and (op.op == "store" or before != pruning.unread):
            return repr(op.value)
    return "holding a value no operation reads"


def _context(deepest: Deepest[State, Operation], unplaced: list[Operation]) -> list[Operation]:
    """Pick the linearized operations that explain the failure, followed by the unplaced ones."""
    window = min((op.start for op in unplaced), default=0)
    overlapping = [
        n for n, (op, _) in enumerate(deepest.order) if op.end is None or op.end >= window
    ]
    first = overlapping[0] if overlapping else len(deepest.order)
    earlier = [n for n in range(first) if _is_write(deepest, n)]
    chosen = earlier[-1:] + overlapping
    return [deepest.order[n][0] for n in chosen] + unplaced


def _is_write(deepest: Deepest[State, Operation], n: int) -> bool:
    """Tell whether the n-th linearized operation set the key's state."""
    op, after = deepest.order[n]
    before = deepest.order[n - 1][1] if n else deepest.initial
    return op.op == "store" or after != before


def _failure(search: KeySearch, checked: int, total: int) -> CheckResult:
    """Build the CheckResult for a key that cannot be linearized."""
    key, deepest = search.part.name, search.deepest()
    unplaced = _unplaced(search, deepest)
    placed = sum(1 for op, _ in deepest.order if op.status == "ok")
    detail = (
        f"{placed} of {len(search.done)} completed operations on key {key!r} could be ordered; "
        f"the key was then {_real_state(search, deepest)} and none of the operations marked '!' "
        f"could come next"
    )
    return CheckResult(False, key, _context(deepest, unplaced), checked, total, unplaced=unplaced, detail=detail)


def _timed_out(search: KeySearch, checked: int, total: int, budget: _search.Budget) -> CheckResult:
    """Build the CheckResult for a check stopped by its time limit: the verdict is unknown."""
    key = search.part.name
    detail = (
        f"the time limit ({budget.deadline - budget.started:g}s) came first, on key {key!r} ({checked} of {budget.keys}; "
        f"the keys before it are linearizable): {search.best_depth:,} of {len(search.done):,} completed operations "
        f"ordered so far, no violation found"
    )
    return CheckResult(None, key, [], checked - 1, total, detail=detail)


def check_operations(
    ops: list[Operation], initial: str = "unknown", timeout: float | None = None, progress: Progress | None = None,
    *, orders: bool = False,
) -> CheckResult:
    """Check a whole history, key by key in sorted order; stop at the first bad key.

    `initial`: "empty" (every key starts absent) or "unknown" (absent or any value). After
    `timeout` seconds the verdict is unknown (linearizable None). `progress` is called
    every PROGRESS_EVERY seconds of a long check. Keys the model leaves out (skipped_keys) are
    not checked: CheckResult.skipped_keys names them. `orders`: also keep each key's order
    (CheckResult.orders). Raises HistoryError for a bad `initial`.
    """
    model = KeyRegister(initial)
    skipped = skipped_keys(ops, initial)
    checked = [op for op in ops if op.key not in skipped] if skipped else ops
    found: dict[str, KeyOrder] = {}
    solved = (lambda search: found.__setitem__(search.part.name, _key_order(search, True))) if orders else None
    outcome = _search.check(model, checked, timeout, progress, solved)
    if outcome.search is None:
        result = CheckResult(True, None, [], outcome.parts, len(ops))
    elif outcome.verdict == "unknown":
        result = _timed_out(outcome.search, outcome.parts, len(ops), outcome.budget)
    else:
        result = _failure(outcome.search, outcome.parts, len(ops))
    if orders and outcome.search is not None:
        found[outcome.search.part.name] = _key_order(outcome.search, False, result.unplaced)
    result.skipped_keys, result.orders = skipped, found
    return result


def check_file(
    path: str | os.PathLike[str], initial: str = "unknown", timeout: float | None = None, progress: Progress | None = None,
    *, orders: bool = False,
) -> CheckResult:
    """Read, validate and check a JSON-lines history file (HistoryError if malformed); see check_operations."""
    return check_operations(read_history(path), initial, timeout, progress, orders=orders)


def _show_state(state: State) -> str:
    """Render a register state for people."""
    if isinstance(state, Unknown):
        excluded = ", ".join(sorted(_show_state(s) for s in state.excluded))  # type: ignore[arg-type]
        return "as before the history (unknown" + (f", not {excluded})" if excluded else ")")
    return "absent" if state is ABSENT else repr(plain_state(state))


def _show_time(value: int | None) -> str:
    """Render a timestamp; an unknown end is shown as 'never'."""
    return "never" if value is None else str(value)


def describe_operation(op: Operation) -> str:
    """One line: client, op, key, arguments, result, status, start, end."""
    args = ""
    if op.op == "cas":
        args = f" expected={op.expected!r} value={op.value!r}"
    elif op.op in ("store", "add"):
        args = f" value={op.value!r}"
    elif op.op in COUNTS:
        args = f" by={op.value!r}"
    if op.ttl is not None:
        args += f" ttl={op.ttl:g}"
    result = "?" if op.status == "info" or (op.op == "store" and op.result is None) else repr(op.result)
    return (
        f"{op.client} {op.op} key={op.key!r}{args} -> {result} [{op.status}] "
        f"start={op.start} end={_show_time(op.end)}"
    )


def describe(result: CheckResult) -> str:
    """Human-readable verdict; for a failure, one line per operation worth looking at."""
    note = [result.skipped_note] if result.skipped_keys else []
    if result.linearizable:
        return "\n".join([f"linearizable: {result.operation_count} operations on {result.checked_keys} keys", *note])
    if result.linearizable is None:
        return "\n".join([f"unknown: {result.detail}", *note])
    lines = [f"NOT linearizable: key {result.key!r}"]
    if result.detail:
        lines.append(result.detail)
    unplaced = {id(op) for op in result.unplaced}
    for op in result.operations:
        mark = "!" if id(op) in unplaced else " "
        lines.append(f"  {mark} {describe_operation(op)}")
    return "\n".join(lines + note)
