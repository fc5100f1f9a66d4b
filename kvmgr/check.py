"""Linearizability checker for key-value histories (Wing & Gong search, as in Lowe / Porcupine).

Each key is an independent register whose states are ABSENT or a string value, so a
history is linearizable iff every key's sub-history is (linearizability is compositional).

Real-time order: operation A precedes B iff A.end < B.start; equal timestamps count as
concurrent. "fail" operations never took effect and are dropped. "info" operations
(outcome unknown) may take effect at any point after their start, or never: their end is
+infinity and their result is whatever the state makes it; an info get is dropped.

Besides the (operations placed, state) cache, the search prunes soundly around info
operations, which otherwise make it enumerate subsets: dominance (fewer info operations
placed is never worse), a normal form (an info operation is placed only when what follows
needs it), symmetry breaking between info operations with the same effect, and merging of
written values that no operation ever reads into one abstract value.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from kvmgr.errors import HistoryError
from kvmgr.history import Operation, read_history


class _Absent:
    """The state of a key that holds no value."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        """Return the single instance."""
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        """Show as <absent>."""
        return "<absent>"


ABSENT = _Absent()
State = str | _Absent


def initial_state() -> State:
    """Every key starts absent."""
    return ABSENT


def _cas_matches(state: State, expected: str | None) -> bool:
    """Tell whether a cas with `expected` (None: only if absent) would swap in `state`."""
    return state is ABSENT if expected is None else state == expected


def _step_unknown(state: State, op: Operation) -> tuple[bool, State]:
    """Apply an operation whose outcome is unknown: always possible, effect per state."""
    if op.op == "store":
        return True, op.value
    if op.op == "delete":
        return True, ABSENT
    if op.op == "cas" and _cas_matches(state, op.expected):
        return True, op.value
    return True, state


def step(state: State, op: Operation) -> tuple[bool, State]:
    """Apply `op` to one key's state: (could it happen now with its result, new state)."""
    if op.status != "ok":
        return _step_unknown(state, op) if op.status == "info" else (True, state)
    kind, result = op.op, op.result
    if kind == "get":
        return (state is ABSENT if result is None else state == result), state
    if kind == "store":
        return (result == "saved") == (state is ABSENT), op.value
    if kind == "delete":
        return (result is True) == (state is not ABSENT), ABSENT
    swapped = _cas_matches(state, op.expected)
    return swapped == (result is True), (op.value if swapped else state)


def partition_by_key(ops: Iterable[Operation]) -> dict[str, list[Operation]]:
    """Group operations by key, keeping their order."""
    groups: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        groups[op.key].append(op)
    return dict(groups)


def _split_relevant(ops: list[Operation]) -> tuple[list[Operation], list[Operation]]:
    """Return (ok ops, info ops that may change the state); fail ops and info gets go."""
    done = [op for op in ops if op.status == "ok"]
    pending = [op for op in ops if op.status == "info" and op.op != "get"]
    for op in done:
        if op.end is None:
            raise HistoryError(f"operation {op!r} is ok but has no end time")
    pending.sort(key=lambda op: op.start)
    return done, pending


@dataclass
class CheckResult:
    """The verdict, and for a failure the key and the operations worth looking at."""

    linearizable: bool
    key: str | None
    operations: list[Operation]
    checked_keys: int
    operation_count: int
    unplaced: list[Operation] = field(default_factory=list)
    detail: str = ""


@dataclass
class _Deepest:
    """The furthest point a failed search reached on one key."""

    order: list[tuple[Operation, State]]
    state_text: str
    unplaced: list[Operation]


class _EventList:
    """Call and return events of ok operations, sorted, in a doubly linked list."""

    def __init__(self, ops: list[Operation]) -> None:
        """Sort events by time, calls before returns at equal times."""
        events = sorted(
            [(op.start, 0, i) for i, op in enumerate(ops)]
            + [(op.end, 1, i) for i, op in enumerate(ops)]
        )
        count = len(events)
        self.head, self.tail = 0, count + 1
        self.next = [*range(1, count + 2), -1]
        self.prev = [-1, *range(count + 1)]
        self.time = [0, *(time for time, _, _ in events), 0]
        self.is_call = [False, *(kind == 0 for _, kind, _ in events), False]
        self.op_of = [-1, *(i for _, _, i in events), -1]
        self.call_node = [0] * len(ops)
        self.return_node = [0] * len(ops)
        for node, (_, kind, i) in enumerate(events, start=1):
            (self.call_node if kind == 0 else self.return_node)[i] = node

    def lift(self, i: int) -> None:
        """Unlink both events of operation i."""
        nxt, prv = self.next, self.prev
        for node in (self.call_node[i], self.return_node[i]):
            nxt[prv[node]] = nxt[node]
            prv[nxt[node]] = prv[node]

    def unlift(self, i: int) -> None:
        """Relink both events of operation i (reverse order of lift)."""
        nxt, prv = self.next, self.prev
        for node in (self.return_node[i], self.call_node[i]):
            nxt[prv[node]] = node
            prv[nxt[node]] = node


class _Clean:
    """Marks a configuration reached by placing a completed operation (not an info one)."""

    def __repr__(self) -> str:
        """Show as <clean>."""
        return "<clean>"


CLEAN = _Clean()
Before = State | _Clean


class _Seen:
    """Configurations already explored, with dominance pruning over info operations.

    A configuration is (ok operations placed, state, info operations placed, before), where
    `before` is CLEAN, or the state before the info operation just placed (whatever comes
    next must need that info operation). Info operations are optional and never constrain
    real-time order, so having placed fewer of them is never worse: a configuration is
    skipped when one with the same key and a subset of its info operations was explored,
    and a CLEAN configuration (searched without restriction) also covers the others.
    """

    def __init__(self) -> None:
        """Start empty."""
        self._info_sets: dict[tuple[int, State, Before], list[int]] = {}

    def _covered(self, key: tuple[int, State, Before], info: int) -> bool:
        """Tell whether an explored configuration with `key` used a subset of `info`."""
        return any(explored & ~info == 0 for explored in self._info_sets.get(key, ()))

    def visit(self, bits: int, state: State, info: int, before: Before) -> bool:
        """Record a configuration; False if it (or one that dominates it) was explored."""
        if before is not CLEAN and self._covered((bits, state, CLEAN), info):
            return False
        key = (bits, state, before)
        known = self._info_sets.get(key)
        if known is None:
            self._info_sets[key] = [info]
            return True
        if self._covered(key, info):
            return False
        known.append(info)
        return True


UNREAD = "\x00unread"
"""Stands for every value that no operation of the key ever reads (see _abstract)."""


def _abstract(done: list[Operation], pending: list[Operation]) -> tuple[list[Operation], list[Operation], str]:
    """Replace written values that no get or cas ever observes by one token.

    States holding two such values are indistinguishable by every operation of the key, so
    merging them is exact; it lets the cache and the twin rule treat their writers alike.
    """
    read = {op.result for op in done if op.op == "get"} | {op.expected for op in done + pending if op.op == "cas"}
    token = UNREAD
    while token in read:
        token += "\x00"

    def model(op: Operation) -> Operation:
        unread = op.op in ("store", "cas") and op.value not in read
        return replace(op, value=token) if unread else op

    return [model(op) for op in done], [model(op) for op in pending], token


def _earlier_twins(pending: list[Operation], masks: list[int]) -> list[int]:
    """For each info operation, the mask of the previous one with the same effect (or 0).

    Info operations with the same effect are interchangeable, and an earlier-started one is
    available whenever a later one is, so they are placed in start order (symmetry breaking).
    """
    last: dict[tuple[str, str | None, str | None], int] = {}
    twins = []
    for j, op in enumerate(pending):
        effect = (op.op, op.expected, op.value)
        twins.append(last.get(effect, 0))
        last[effect] = masks[j]
    return twins


class _KeySearch:
    """Depth-first search for a linearization of one key's operations, with a cache."""

    def __init__(self, done: list[Operation], pending: list[Operation]) -> None:
        """Prepare events, bit masks and the search state."""
        self.done, self.pending = done, pending
        self.model_done, self.model_pending, self.unread = _abstract(done, pending)
        self.events = _EventList(done)
        count = len(done)
        self.done_mask = [1 << i for i in range(count)]
        self.pending_mask = [1 << j for j in range(len(pending))]
        self.pending_start = [op.start for op in pending]
        # A blind write right after another info operation is never needed: placing it
        # directly instead reaches the same state with fewer info operations used.
        self.pending_blind = [op.op in ("store", "delete") for op in pending]
        self.twin_placed = _earlier_twins(self.model_pending, self.pending_mask)
        self.seen = _Seen()
        self.best_depth = -1
        self.best: tuple[object, int, State] | None = None

    def run(self) -> bool:
        """Search; True if some order of the operations explains every result.

        Completed operations are tried first, in event order; info operations only when no
        completed one can come next. Only linearizations in a normal form are searched: an
        info operation is followed by a completed operation that is impossible without it,
        or by an info cas. Any linearization can be rewritten so: drop the info operation
        when what follows works without it, or move it after a failed cas.
        """
        ev, done, seen = self.events, self.model_done, self.seen
        nxt, is_call, op_of, times, done_mask = ev.next, ev.is_call, ev.op_of, ev.time, self.done_mask
        head, tail = ev.head, ev.tail
        state, before, bits, info, depth, frame = initial_state(), CLEAN, 0, 0, 0, None
        node, first_pending = nxt[head], 0
        self._remember(depth, frame, bits, state)
        while nxt[head] != tail:
            if is_call[node]:
                i = op_of[node]
                ok, new_state = step(state, done[i])
                if (
                    ok
                    and (before is CLEAN or not step(before, done[i])[0])
                    and seen.visit(bits | done_mask[i], new_state, info, CLEAN)
                ):
                    frame = (frame, node, i, state, bits, info, before)
                    ev.lift(i)
                    state, before, bits, depth = new_state, CLEAN, bits | done_mask[i], depth + 1
                    if depth > self.best_depth:
                        self._remember(depth, frame, bits, state)
                    node = nxt[head]
                else:
                    node = nxt[node]
                continue
            j, new_state = self._next_info(first_pending, times[node], state, bits, info, before)
            if j >= 0:
                frame = (frame, node, -1 - j, state, bits, info, before)
                state, before, info = new_state, state, info | self.pending_mask[j]
                node, first_pending = nxt[head], 0
                continue
            if frame is None:
                return False
            frame, last, i, state, bits, info, before = frame
            if i >= 0:
                ev.unlift(i)
                depth -= 1
                node, first_pending = nxt[last], 0
            else:
                node, first_pending = last, -i
        return True

    def _next_info(
        self, first: int, deadline: int, state: State, bits: int, info: int, before: Before
    ) -> tuple[int, State]:
        """Find the next info operation (from index `first`) worth placing; (-1, state) if none."""
        pending_mask, blind, twins = self.pending_mask, self.pending_blind, self.twin_placed
        for j in range(first, len(self.pending)):
            if self.pending_start[j] > deadline:
                break
            twin = twins[j]
            if info & pending_mask[j] or info & twin != twin or (before is not CLEAN and blind[j]):
                continue
            _, new_state = step(state, self.model_pending[j])
            if new_state != state and self.seen.visit(bits, new_state, info | pending_mask[j], state):
                return j, new_state
        return -1, state

    def _remember(self, depth: int, frame: object, bits: int, state: State) -> None:
        """Keep the deepest point reached (frames are immutable, so this is O(1))."""
        self.best_depth, self.best = depth, (frame, bits, state)

    def deepest(self) -> _Deepest:
        """Describe the deepest point: the order found so far and what could not follow."""
        assert self.best is not None
        frame, bits, state = self.best
        order: list[tuple[Operation, State]] = []
        after = state
        while frame is not None:
            frame, _, i, before, _, _, _ = frame  # type: ignore[misc]
            order.append((self.done[i] if i >= 0 else self.pending[-1 - i], after))
            after = before
        order.reverse()
        return _Deepest(order, self._real_state(order, state), self._unplaced(bits))

    def _real_state(self, order: list[tuple[Operation, State]], state: State) -> str:
        """Show the state, undoing the unread-value abstraction via the last write."""
        if state != self.unread:
            return _show_state(state)
        for n in range(len(order) - 1, -1, -1):
            op, after = order[n]
            before = order[n - 1][1] if n else ABSENT
            if after == self.unread and (op.op == "store" or before != self.unread):
                return repr(op.value)
        return "holding a value no operation reads"

    def _unplaced(self, bits: int) -> list[Operation]:
        """The ok operations that were candidates at `bits` (none of them could be placed)."""
        left = [op for i, op in enumerate(self.done) if not bits & self.done_mask[i]]
        if not left:
            return []
        deadline = min(op.end for op in left if op.end is not None)
        return sorted((op for op in left if op.start <= deadline), key=lambda op: op.start)


def _context(deepest: _Deepest) -> list[Operation]:
    """Pick the linearized operations that explain the failure, followed by the unplaced ones."""
    window = min((op.start for op in deepest.unplaced), default=0)
    overlapping = [
        n for n, (op, _) in enumerate(deepest.order) if op.end is None or op.end >= window
    ]
    first = overlapping[0] if overlapping else len(deepest.order)
    earlier = [n for n in range(first) if _is_write(deepest.order, n)]
    chosen = earlier[-1:] + overlapping
    return [deepest.order[n][0] for n in chosen] + deepest.unplaced


def _is_write(order: list[tuple[Operation, State]], n: int) -> bool:
    """Tell whether the n-th linearized operation set the key's state."""
    op, after = order[n]
    before = order[n - 1][1] if n else ABSENT
    return op.op == "store" or after != before


def _failure(key: str, search: _KeySearch, checked: int, total: int) -> CheckResult:
    """Build the CheckResult for a key that cannot be linearized."""
    deepest = search.deepest()
    placed = sum(1 for op, _ in deepest.order if op.status == "ok")
    detail = (
        f"{placed} of {len(search.done)} completed operations on key {key!r} could be ordered; "
        f"the key was then {deepest.state_text} and none of the operations marked '!' "
        f"could come next"
    )
    return CheckResult(
        False, key, _context(deepest), checked, total, unplaced=deepest.unplaced, detail=detail
    )


def check_operations(ops: list[Operation]) -> CheckResult:
    """Check a whole history, key by key in sorted order; stop at the first bad key."""
    groups = partition_by_key(ops)
    for checked, key in enumerate(sorted(groups), start=1):
        search = _KeySearch(*_split_relevant(groups[key]))
        if not search.run():
            return _failure(key, search, checked, len(ops))
    return CheckResult(True, None, [], len(groups), len(ops))


def check_file(path: str | os.PathLike[str]) -> CheckResult:
    """Read, validate and check a JSON-lines history file (HistoryError if malformed)."""
    return check_operations(read_history(path))


def _show_state(state: State) -> str:
    """Render a register state for people."""
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
    result = "?" if op.status == "info" else repr(op.result)
    return (
        f"{op.client} {op.op} key={op.key!r}{args} -> {result} [{op.status}] "
        f"start={op.start} end={_show_time(op.end)}"
    )


def describe(result: CheckResult) -> str:
    """Human-readable verdict; for a failure, one line per operation worth looking at."""
    if result.linearizable:
        return f"linearizable: {result.operation_count} operations on {result.checked_keys} keys"
    lines = [f"NOT linearizable: key {result.key!r}"]
    if result.detail:
        lines.append(result.detail)
    unplaced = {id(op) for op in result.unplaced}
    for op in result.operations:
        mark = "!" if id(op) in unplaced else " "
        lines.append(f"  {mark} {describe_operation(op)}")
    return "\n".join(lines)
