"""Linearizability checker for key-value histories: the key register model searched by the generic search.

The model (kvmgr/verify/register.py) says what a key's operations do and offers the prunings that
make the search fast; the search (kvmgr/verify/search.py) is Wing & Gong's, as in Lowe's and
Porcupine's checkers, and works for any model (kvmgr/verify/model.py). This module is the public
entry: check_operations and check_file answer ok, illegal or unknown (CheckResult.outcome) and, for a
failure, name the first bad key and the operations worth looking at (describe).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kvmgr.verify import search as _search
from kvmgr.verify.history import Operation, read_history
from kvmgr.verify.register import (
    ABSENT,
    INITIAL_STATES,
    KeyRegister,
    RegisterPruning,
    State,
    Unknown,
    needed_state,
    partition_by_key,
    step,
)
from kvmgr.verify.search import PROGRESS_EVERY, SEEN_LIMIT, CheckProgress, Deepest, Progress, Search

__all__ = [
    "ABSENT", "CHECK_TIMEOUT", "INITIAL_STATES", "PROGRESS_EVERY", "SEEN_LIMIT", "CheckProgress", "CheckResult", "Progress",
    "Unknown", "check_file", "check_operations", "describe", "describe_operation", "partition_by_key", "step",
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

    @property
    def verdict(self) -> str:
        """'yes', 'NO' or 'unknown', as tables show it."""
        return {True: "yes", False: "NO", None: "unknown"}[self.linearizable]


    @property
    def outcome(self) -> str:
        """'ok', 'illegal' or 'unknown' (the time limit came first), as Porcupine answers."""
        return OUTCOMES[self.linearizable]


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
        if done[i].start <= window or (state is not ABSENT and needed_state(done[i]) == state)  # type: ignore[operator]
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
    ops: list[Operation], initial: str = "unknown", timeout: float | None = None, progress: Progress | None = None
) -> CheckResult:
    """Check a whole history, key by key in sorted order; stop at the first bad key.

    `initial`: "empty" (every key starts absent) or "unknown" (absent or any value). After
    `timeout` seconds the verdict is unknown (linearizable None). `progress` is called
    every PROGRESS_EVERY seconds of a long check. Raises HistoryError for a bad `initial`.
    """
    outcome = _search.check(KeyRegister(initial), ops, timeout, progress)
    if outcome.search is None:
        return CheckResult(True, None, [], outcome.parts, len(ops))
    if outcome.verdict == "unknown":
        return _timed_out(outcome.search, outcome.parts, len(ops), outcome.budget)
    return _failure(outcome.search, outcome.parts, len(ops))


def check_file(
    path: str | os.PathLike[str], initial: str = "unknown", timeout: float | None = None, progress: Progress | None = None
) -> CheckResult:
    """Read, validate and check a JSON-lines history file (HistoryError if malformed); see check_operations."""
    return check_operations(read_history(path), initial, timeout, progress)


def _show_state(state: State) -> str:
    """Render a register state for people."""
    if isinstance(state, Unknown):
        excluded = ", ".join(sorted(_show_state(s) for s in state.excluded))  # type: ignore[arg-type]
        return "as before the history (unknown" + (f", not {excluded})" if excluded else ")")
    return "absent" if state is ABSENT else repr(state)


def _show_time(value: int | None) -> str:
    """Render a timestamp; an unknown end is shown as 'never'."""
    return "never" if value is None else str(value)


def describe_operation(op: Operation) -> str:
    """One line: client, op, key, arguments, result, status, start, end."""
    args = ""
    if op.op == "cas":
        args = f" expected={op.expected!r} value={op.value!r}"
    elif op.op == "store":
        args = f" value={op.value!r}"
    result = "?" if op.status == "info" or (op.op == "store" and op.result is None) else repr(op.result)
    return (
        f"{op.client} {op.op} key={op.key!r}{args} -> {result} [{op.status}] "
        f"start={op.start} end={_show_time(op.end)}"
    )


def describe(result: CheckResult) -> str:
    """Human-readable verdict; for a failure, one line per operation worth looking at."""
    if result.linearizable:
        return f"linearizable: {result.operation_count} operations on {result.checked_keys} keys"
    if result.linearizable is None:
        return f"unknown: {result.detail}"
    lines = [f"NOT linearizable: key {result.key!r}"]
    if result.detail:
        lines.append(result.detail)
    unplaced = {id(op) for op in result.unplaced}
    for op in result.operations:
        mark = "!" if id(op) in unplaced else " "
        lines.append(f"  {mark} {describe_operation(op)}")
    return "\n".join(lines)
