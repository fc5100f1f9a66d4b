"""Linearizability checker for key-value histories (Wing & Gong search, as in Lowe / Porcupine).

Each key is an independent register whose states are ABSENT or a value, so a history is
linearizable iff every key's sub-history is (linearizability is compositional). A key starts
ABSENT ("empty"), or in an Unknown state that stands for whatever it held before ("unknown").

Real-time order: operation A precedes B iff A.end < B.start; equal timestamps count as
concurrent. "fail" operations never took effect and are dropped. "info" operations
(outcome unknown) may take effect at any point after their start, or never: their end is
+infinity and their result is whatever the state makes it; an info get is dropped.

The search tries, at each point, the completed operations called before the first pending
return, earliest return first; a read that can come next is placed at once, and of two
operations with the same effect and result whose calls and returns are in the same order, the
earlier goes first. The cache of (operations placed, state) holds each set of placed
operations as the first one not placed plus a bitmask of the few after it (see _placed), so
memory grows with the history's length times its concurrency, not its square; past a bound it
forgets its oldest half (costing time, never exactness). A move is pruned when it leaves a
state that a completed operation not placed yet still needs, and nothing left can bring that
state back in time (see _Obligations). Around info operations, which otherwise make it
enumerate subsets: dominance (fewer info operations placed is never worse), a normal form (an
info operation is placed only when what follows needs it), symmetry breaking between info
operations with the same effect (and between stores of values no operation left can observe),
and merging of written values that no operation ever reads into one abstract value. Every
pruning rule is checked against a brute-force oracle (tests/test_check.py).
"""

from __future__ import annotations

import bisect
import itertools
import math
import os
import time
from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from kvmgr.errors import HistoryError
from kvmgr.verify.history import Operation, Value, read_history


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
PRESENT = object()
"""Not a state: stands for every value in the index of what completed operations need (_Obligations)."""


@dataclass(frozen=True)
class Unknown:
    """The state before the history when the start is unknown: absent or any value, except `excluded`.

    It is one fixed value, only not yet observed; every observation narrows it. A failed cas
    excludes what it expected; a read, or any write, makes the state known.
    """

    excluded: frozenset[object] = frozenset()


State = Value | _Absent | Unknown
INITIAL_STATES: dict[str, State] = {"empty": ABSENT, "unknown": Unknown()}
"""What --initial may say about every key before the history: it was absent, or it is unknown."""


def _cas_matches(state: State, expected: Value | None) -> bool:
    """Tell whether a cas with `expected` (None: only if absent) would swap in `state`."""
    return state is ABSENT if expected is None else state == expected


def _step_unknown(state: State, op: Operation) -> tuple[bool, State]:
    """Apply an operation whose outcome is unknown: always possible, effect per state."""
    if op.op == "store":
        return True, op.value  # type: ignore[return-value]
    if op.op == "delete":
        return True, ABSENT
    if op.op == "cas" and _may_match(state, op.expected):
        return True, op.value  # type: ignore[return-value]
    return True, state


def _may_match(state: State, expected: Value | None) -> bool:
    """Tell whether a cas with `expected` can swap in `state` (an unknown one may hold it)."""
    if isinstance(state, Unknown):
        return (ABSENT if expected is None else expected) not in state.excluded
    return _cas_matches(state, expected)


def _step_from_unknown(state: Unknown, op: Operation) -> tuple[bool, State]:
    """Apply a completed operation to the unknown first state: what it observed must be allowed."""
    allowed = state.excluded.__contains__
    kind, result = op.op, op.result
    if kind == "get":
        seen = ABSENT if result is None else result
        return not allowed(seen), seen  # type: ignore[return-value]
    if kind == "store":
        return result == "updated" or not allowed(ABSENT), op.value  # type: ignore[return-value]
    if kind == "delete":
        return result is True or not allowed(ABSENT), ABSENT
    expected = ABSENT if op.expected is None else op.expected
    if result is True:
        return not allowed(expected), op.value  # type: ignore[return-value]
    return True, Unknown(state.excluded | {expected})


def step(state: State, op: Operation) -> tuple[bool, State]:
    """Apply `op` to one key's state: (could it happen now with its result, new state)."""
    if op.status != "ok":
        return _step_unknown(state, op) if op.status == "info" else (True, state)
    if isinstance(state, Unknown):
        return _step_from_unknown(state, op)
    kind, result = op.op, op.result
    if kind == "get":
        return (state is ABSENT if result is None else state == result), state
    if kind == "store":
        return (result == "saved") == (state is ABSENT), op.value  # type: ignore[return-value]
    if kind == "delete":
        return (result is True) == (state is not ABSENT), ABSENT
    swapped = _cas_matches(state, op.expected)
    return swapped == (result is True), (op.value if swapped else state)  # type: ignore[return-value]


def partition_by_key(ops: Iterable[Operation]) -> dict[str, list[Operation]]:
    """Group operations by key, keeping their order."""
    groups: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        groups[op.key].append(op)
    return dict(groups)


def _split_relevant(ops: list[Operation]) -> tuple[list[Operation], list[Operation]]:
    """Return (ok ops, info ops that may change the state), each by start; fail ops and info gets go."""
    done = [op for op in ops if op.status == "ok"]
    pending = [op for op in ops if op.status == "info" and op.op != "get"]
    for op in done:
        if op.end is None:
            raise HistoryError(f"operation {op!r} is ok but has no end time")
    done.sort(key=lambda op: op.start)
    pending.sort(key=lambda op: op.start)
    return done, pending


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


@dataclass(frozen=True)
class CheckProgress:
    """How far a long check got: keys finished, and operations placed on the key being searched."""

    keys_done: int
    keys: int
    key: str
    placed: int
    deepest: int
    key_operations: int
    seconds: float

    def line(self) -> str:
        """One line for stderr."""
        return (
            f"check: {self.keys_done}/{self.keys} keys done, key {self.key!r}: {self.placed:,} of "
            f"{self.key_operations:,} completed operations placed (deepest {self.deepest:,}), {self.seconds:.0f}s"
        )


PROGRESS_EVERY = 2.0
"""Seconds between progress reports (the first comes after as long)."""
SEEN_LIMIT = 1 << 19
"""Configurations a key's search remembers at least (4 per completed operation if more; each takes about 200 bytes)."""
CHECK_TIMEOUT = 60.0
"""The time limit the tools (the driver, kvmgr stress) give a check by default, in seconds."""
Progress = Callable[[CheckProgress], None]


class _OutOfTime(Exception):
    """The time limit passed during a search."""


class _Budget:
    """The time limit and the progress reports of one check_operations call."""

    def __init__(self, timeout: float | None, progress: Progress | None, keys: int) -> None:
        """Start the clock."""
        self.started = time.monotonic()
        self.deadline = math.inf if timeout is None else self.started + timeout
        self.progress, self.keys = progress, keys
        self.next_report = self.started + PROGRESS_EVERY
        self.keys_done, self.key = 0, ""

    def check(self, placed: int, deepest: int, key_operations: int) -> None:
        """Raise _OutOfTime past the deadline; report progress when it is time to."""
        now = time.monotonic()
        if now >= self.deadline:
            raise _OutOfTime
        if self.progress is not None and now >= self.next_report:
            self.next_report = now + PROGRESS_EVERY
            self.progress(CheckProgress(self.keys_done, self.keys, self.key, placed, deepest, key_operations, now - self.started))


@dataclass
class _Deepest:
    """The furthest point a failed search reached on one key, which started in state `initial`."""

    initial: State
    order: list[tuple[Operation, State]]
    state_text: str
    unplaced: list[Operation]


def _tightened_ends(done: list[Operation], pending: list[Operation]) -> list[int]:
    """The return times to search with, from an empty start: a write that alone can produce the value a
    completed read needs must come before that read, so it returns, in effect, by the time the read does.

    Every linearization keeps the tightened real-time order too, so the search stays exact; long writes
    whose value is read soon stop being candidates for long.
    """
    writers: dict[Value, list[int]] = defaultdict(list)
    for i, op in enumerate(done):
        if op.op == "store" or (op.op == "cas" and op.result is True):
            writers[op.value].append(i)  # type: ignore[index]
    maybe_written = {op.value for op in pending}
    ends = [op.end for op in done]
    for op in done:
        needed = _needed_state(op)
        found = writers.get(needed) if needed is not ABSENT else None  # type: ignore[arg-type]
        if found and len(found) == 1 and needed not in maybe_written:
            i = found[0]
            ends[i] = max(done[i].start, min(ends[i], op.end))  # type: ignore[type-var]
    return ends  # type: ignore[return-value]


class _EventList:
    """Call and return events of ok operations, sorted, in a doubly linked list."""

    def __init__(self, ops: list[Operation], ends: list[int]) -> None:
        """Sort events by time, calls before returns at equal times (compact arrays: O(n) machine words)."""
        count = 2 * len(ops)
        times = [time for op, end in zip(ops, ends, strict=True) for time in (op.start, end)]  # event e is op e >> 1
        order = [2 * time + (e & 1) for e, time in enumerate(times)]  # calls before returns at equal times
        events = sorted(range(count), key=order.__getitem__)
        self.head, self.tail = 0, count + 1
        self.next = array("q", range(1, count + 2))
        self.next.append(-1)
        self.prev = array("q", range(-1, count + 1))
        self.time = [0, *(times[e] for e in events), 0]
        self.is_call = bytes([0, *(1 - (e & 1) for e in events), 0])
        self.op_of = array("q", [-1, *(e >> 1 for e in events), -1])
        self.call_node = array("q", bytes(8 * len(ops)))
        self.return_node = array("q", bytes(8 * len(ops)))
        for node, e in enumerate(events, start=1):
            (self.return_node if e & 1 else self.call_node)[e >> 1] = node

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
    The ok operations placed are (k, w), see _placed; each key holds one info set, or a list.
    Past `limit` configurations the older half is forgotten: that costs time, never exactness
    (a configuration explored twice fails twice), and it bounds memory on hopeless histories.
    """

    def __init__(self, limit: int) -> None:
        """Start empty; remember at most about `limit` configurations."""
        self._info_sets: dict[tuple[int, int, State, Before], int | list[int]] = {}
        self.limit = limit

    def _forget_older_half(self) -> None:
        """Drop the configurations recorded first."""
        for key in list(itertools.islice(self._info_sets, len(self._info_sets) // 2)):
            del self._info_sets[key]

    def _covered(self, key: tuple[int, int, State, Before], info: int) -> bool:
        """Tell whether an explored configuration with `key` used a subset of `info`."""
        known = self._info_sets.get(key)
        if known is None:
            return False
        if isinstance(known, int):
            return known & ~info == 0
        return any(explored & ~info == 0 for explored in known)

    def visit(self, k: int, w: int, state: State, info: int, before: Before) -> bool:
        """Record a configuration; False if it (or one that dominates it) was explored."""
        if before is not CLEAN and self._covered((k, w, state, CLEAN), info):
            return False
        key = (k, w, state, before)
        known = self._info_sets.get(key)
        if known is None:
            self._info_sets[key] = info
            if len(self._info_sets) > self.limit:
                self._forget_older_half()
            return True
        if self._covered(key, info):
            return False
        if isinstance(known, int):
            self._info_sets[key] = [known, info]
        else:
            known.append(info)
        return True


def _placed(k: int, w: int, i: int) -> tuple[int, int]:
    """(k, w) after placing ok operation i, where k is the first ok operation (by start) not placed
    and bit t of w says whether operation k + t is.

    Every set of placed operations is closed under real-time order, so the ones after k all
    overlap operation k: w has as many bits as the history is concurrent, not as it is long.
    """
    w |= 1 << (i - k)
    if i == k:
        ones = (~w & (w + 1)).bit_length() - 1
        k, w = k + ones, w >> ones
    return k, w


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
        if op.op not in ("store", "cas") or op.value in read:
            return op
        return Operation(op.client, op.op, op.key, token, op.expected, op.result, op.status, op.start, op.end)

    return [model(op) for op in done], [model(op) for op in pending], token


def _earlier_twins(pending: list[Operation], masks: list[int]) -> list[int]:
    """For each info operation, the mask of the previous one with the same effect (or 0).

    Info operations with the same effect are interchangeable, and an earlier-started one is
    available whenever a later one is, so they are placed in start order (symmetry breaking).
    """
    last: dict[tuple[str, Value | None, Value | None], int] = {}
    twins = []
    for j, op in enumerate(pending):
        effect = (op.op, op.expected, op.value)
        twins.append(last.get(effect, 0))
        last[effect] = masks[j]
    return twins


def _bits(mask: int) -> Iterator[int]:
    """The indexes of the set bits of `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _last_readers(done: list[Operation], pending: list[Operation]) -> dict[Value, float]:
    """For each value some operation observes, the index of the last completed one that does.

    A value an info cas expects may be observed whenever that cas is placed: +infinity.
    """
    last: dict[Value, float] = {}
    for i, op in enumerate(done):
        seen = op.result if op.op == "get" else op.expected if op.op == "cas" else None
        if seen is not None:
            last[seen] = i  # type: ignore[index]
    for op in pending:
        if op.op == "cas" and op.expected is not None:
            last[op.expected] = math.inf
    return last


class _InfoIndex:
    """Which info operations are worth trying where no completed operation can come next.

    Stores and deletes only right after a completed operation (the normal form); of the
    deletes, the first one free; of the stores whose value no operation left can observe
    (unread values, or values whose readers are all among the first k, all placed), one
    stands for all, as they are interchangeable; the other stores each; of the cas, those
    that would swap. Bit masks over the info operations (by start) keep this cheap.
    """

    def __init__(self, done: list[Operation], pending: list[Operation], unread: Value) -> None:
        """Index the info operations `pending` (sorted by start) of a key with completed `done`."""
        self.start = [op.start for op in pending]
        self.mask = [1 << j for j in range(len(pending))]
        self.twins = _earlier_twins(pending, self.mask)
        last = _last_readers(done, pending)
        self.last_reader = [last.get(op.value, -1) if op.op == "store" else -1 for op in pending]  # type: ignore[arg-type]
        self.unread_stores = self.read_stores = self.deletes = 0
        self.cas_by_expected: dict[State, int] = defaultdict(int)
        for j, op in enumerate(pending):
            if op.op == "delete":
                self.deletes |= self.mask[j]
            elif op.op == "cas":
                self.cas_by_expected[ABSENT if op.expected is None else op.expected] |= self.mask[j]
            elif op.value == unread:
                self.unread_stores |= self.mask[j]
            else:
                self.read_stores |= self.mask[j]

    def candidates(self, deadline: int, state: State, k: int, info: int, before: Before) -> list[int]:
        """The info operations worth trying, by index: the same for the same configuration."""
        free = ((1 << bisect.bisect_right(self.start, deadline)) - 1) & ~info
        found = list(_bits(free & self._swapping(state)))
        if before is CLEAN:
            stand_in = _lowest(free & self.unread_stores)
            for j in _bits(free & self.read_stores):
                if self.last_reader[j] >= k:
                    found.append(j)
                elif stand_in < 0:
                    stand_in = j
            found += [j for j in (stand_in, _lowest(free & self.deletes)) if j >= 0]
        return sorted(found)

    def _swapping(self, state: State) -> int:
        """The mask of the info cas that would swap in `state`."""
        if isinstance(state, Unknown):
            return sum(mask for expected, mask in self.cas_by_expected.items() if expected not in state.excluded)
        return self.cas_by_expected.get(state, 0)


def _lowest(mask: int) -> int:
    """The index of the lowest set bit of `mask`, -1 if none."""
    return (mask & -mask).bit_length() - 1


class _Obligations:
    """States that completed operations still need, and whether they can still get them in time.

    A completed get of v, or a cas that swapped from v, needs the key to hold v at its point;
    a get of nothing, a store that saved, a delete of nothing or a cas from absent needs it
    absent; a store that updated, a delete that deleted or a cas that found the key present
    need it to hold some value (PRESENT). Leaving such a state is dead when a reader of it is
    not placed yet and every operation left that could bring the state back (a writer of v;
    a delete; a store or cas that can fill an absent key) started after that reader
    returned: it could not come before the reader.
    """

    def __init__(self, done: list[Operation], pending: list[Operation]) -> None:
        """Index, per needed state, its readers (with the least return time from each on) and its writers."""
        self.done, self.pending_start = done, [op.start for op in pending]
        self.ends = [cast(int, op.end) for op in done]  # completed: every end is known
        readers: dict[object, list[int]] = defaultdict(list)
        self.needs: list[State | None] = [_needed_state(op) for op in done]
        for i, needed in enumerate(self.needs):
            if needed is not None:
                readers[needed].append(i)
            if _needs_a_value(done[i]):
                readers[PRESENT].append(i)
        self.readers = dict(readers)
        self._timing: dict[object, tuple[list[int], list[int]]] = {}
        self.writers: dict[object, list[int]] = defaultdict(list)
        for i, op in enumerate(done):
            if op.op == "store" or (op.op == "cas" and op.result is True) or (op.op == "delete" and op.result):
                self.writers[ABSENT if op.op == "delete" else op.value].append(i)
            if op.result == "saved" or (op.op == "cas" and op.result is True and op.expected is None):
                self.writers[PRESENT].append(i)
        self.info_writers: dict[object, int] = defaultdict(int)
        for j, op in enumerate(pending):
            self.info_writers[ABSENT if op.op == "delete" else op.value] |= 1 << j
            if op.op == "store" or (op.op == "cas" and op.expected is None):
                self.info_writers[PRESENT] |= 1 << j

    def strands(self, state: State, new_state: State, k: int, w: int, info: int) -> bool:
        """Tell whether going from `state` to `new_state` leaves a reader of `state` no time to see it again.

        (k, w) and `info` are the operations placed once the move is made.
        """
        if new_state == state:
            return False
        if new_state is ABSENT and not isinstance(state, Unknown) and self._stranded(PRESENT, k, w, info):
            return True
        return self._stranded(state, k, w, info)

    def doomed(self, state: State, due: int, k: int, w: int, info: int) -> bool:
        """Tell whether the key must leave `state` before operation `due` returns (it needs another) for good:
        a reader of `state` called after `due` returned would need a writer of it that is not there in time."""
        if isinstance(state, Unknown):
            return False
        end = self.ends[due]
        if state is not ABSENT and self.needs[due] is ABSENT and self._stranded(PRESENT, k, w, info, end):
            return True
        return self._stranded(state, k, w, info, end)

    def _stranded(self, state: object, k: int, w: int, info: int, after: float = -math.inf) -> bool:
        """Tell whether some reader of `state` not placed (and called after `after`) returned before any writer
        of it not placed started."""
        readers = self.readers.get(state)
        if not readers:
            return False
        starts, least_end_from = self._reader_timing(state, readers)
        span = k + w.bit_length()
        first = max(bisect.bisect_left(readers, k), bisect.bisect_right(starts, after))
        beyond = max(first, bisect.bisect_left(readers, span))
        least_end = least_end_from[beyond] if beyond < len(readers) else math.inf
        for r in readers[first:beyond]:
            if not w >> (r - k) & 1:
                least_end = min(least_end, self.ends[r])
        return least_end < self._least_writer_start(state, k, w, info)

    def _reader_timing(self, state: object, readers: list[int]) -> tuple[list[int], list[int]]:
        """The readers' starts, and the least return time of the readers from each on (made when first needed)."""
        timing = self._timing.get(state)
        if timing is None:
            ends = list(itertools.accumulate((self.ends[i] for i in reversed(readers)), min))[::-1]
            timing = self._timing[state] = ([self.done[i].start for i in readers], ends)
        return timing

    def _least_writer_start(self, state: object, k: int, w: int, info: int) -> float:
        """The earliest start of an operation not placed that can bring `state` back."""
        least = math.inf
        free = self.info_writers.get(state, 0) & ~info
        if free:
            least = self.pending_start[_lowest(free)]
        writers = self.writers.get(state, ())
        for x in writers[bisect.bisect_left(writers, k):]:
            if x - k >= w.bit_length() or not w >> (x - k) & 1:
                return min(least, self.done[x].start)
        return least


def _needs_a_value(op: Operation) -> bool:
    """Tell whether a completed operation needs the key to hold some value, whichever."""
    return op.result == "updated" or (op.op == "delete" and op.result is True) or (
        op.op == "cas" and op.result is False and op.expected is None
    )


def _needed_state(op: Operation) -> State | None:
    """The state a completed operation needs just before it, when one state only will do (else None)."""
    if op.op == "get":
        return ABSENT if op.result is None else op.result  # type: ignore[return-value]
    if op.op == "cas" and op.result is True:
        return ABSENT if op.expected is None else op.expected
    if (op.op == "store" and op.result == "saved") or (op.op == "delete" and op.result is False):
        return ABSENT
    return None


class _KeySearch:
    """Depth-first search for a linearization of one key's operations, with a cache."""

    def __init__(self, done: list[Operation], pending: list[Operation], initial: State, budget: _Budget) -> None:
        """Prepare events, bit masks and the search state; `done` and `pending` are sorted by start."""
        self.done, self.pending, self.initial, self.budget = done, pending, initial, budget
        self.model_done, self.model_pending, self.unread = _abstract(done, pending)
        ends = _tightened_ends(self.model_done, self.model_pending) if initial is ABSENT else [op.end for op in done]
        self.events = _EventList(done, ends)  # type: ignore[arg-type]
        self.reader = [op.op == "get" or op.result is False for op in done]
        effects: dict[tuple[object, ...], int] = {}
        self.effect = array("q", (effects.setdefault((op.op, op.expected, op.value, op.result), len(effects)) for op in self.model_done))
        self.end_rank = array("q", bytes(8 * len(done)))
        for rank, i in enumerate(sorted(range(len(done)), key=ends.__getitem__)):  # type: ignore[arg-type]
            self.end_rank[i] = rank
        self.info = _InfoIndex(self.model_done, self.model_pending, self.unread)
        self.obligations = _Obligations(self.model_done, self.model_pending)
        self.seen = _Seen(max(SEEN_LIMIT, 4 * len(done)))
        self.best_depth = -1
        self.best: tuple[Any, int, int, State] | None = None

    def run(self) -> bool:
        """Search; True if some order of the operations explains every result (_OutOfTime past the limit).

        The candidates are the completed operations called before the first return not yet
        placed; they are tried by return time, earliest first, and info operations only when
        none of them can come next. Only linearizations in a normal form are searched: an
        info operation is followed by a completed operation that is impossible without it,
        or by an info cas. Any linearization can be rewritten so: drop the info operation
        when what follows works without it, or move it after a failed cas. A completed
        operation that can come next and leaves the state as it is (a read) is placed at
        once, with no alternative tried: moving it to the front of any linearization that
        places it later keeps that linearization valid. A configuration is dropped at once
        when the first operation due to return needs another state and leaving this one is
        fatal (_Obligations.doomed); a move, when it strands a reader (_Obligations.strands).
        """
        ev, done, seen, budget, obligations = self.events, self.model_done, self.seen, self.budget, self.obligations
        head, tail, total, nxt = ev.head, ev.tail, len(done), ev.next
        state, k, w, info, depth = self.initial, 0, 0, 0, 0
        before: Before = CLEAN
        frame: Any = None  # (parent, deadline, i or -1 - j, state, k, w, info, before, forced): see deepest()
        candidates: list[int] = []
        position, deadline, first_pending, fresh, steps = 0, 0, 0, True, 0
        seen.visit(k, w, state, info, before)
        self._remember(depth, frame, k, w, state)
        while nxt[head] != tail:
            steps += 1
            if not steps & 1023:
                budget.check(depth, self.best_depth, total)
            if fresh:
                fresh, (candidates, deadline, due), position, first_pending = False, self._candidates(), 0, 0
                if not step(state, done[due])[0] and obligations.doomed(state, due, k, w, info):
                    candidates = []  # and no info operation either: this configuration cannot be completed
                    deadline = -1
                i = self._reader(candidates, state, before)
                if i >= 0:
                    k2, w2 = _placed(k, w, i)
                    if seen.visit(k2, w2, state, info, CLEAN):
                        frame = (frame, deadline, i, state, k, w, info, before, True)
                        ev.lift(i)
                        before, k, w, depth, fresh = CLEAN, k2, w2, depth + 1, True
                        if depth > self.best_depth:
                            self._remember(depth, frame, k, w, state)
                        continue
                    deadline = -1  # the read leads to a configuration that failed: so does this one
            while position < len(candidates) and deadline >= 0:
                i = candidates[position]
                position += 1
                ok, new_state = step(state, done[i])
                if ok and (before is CLEAN or not step(before, done[i])[0]):  # type: ignore[arg-type]
                    k2, w2 = _placed(k, w, i)
                    if not obligations.strands(state, new_state, k2, w2, info) and seen.visit(k2, w2, new_state, info, CLEAN):
                        break
            else:
                j, new_state = self._next_info(first_pending, deadline, state, k, w, info, before)
                if j >= 0:
                    frame = (frame, deadline, -1 - j, state, k, w, info, before, False)
                    state, before, info, fresh = new_state, state, info | self.info.mask[j], True
                    continue
                forced = True
                while forced:
                    if frame is None:
                        return False
                    frame, deadline, i, state, k, w, info, before, forced = frame
                    if i >= 0:
                        ev.unlift(i)
                        depth -= 1
                if i >= 0:
                    candidates, deadline, _ = self._candidates()
                    position, first_pending = candidates.index(i) + 1, 0
                else:
                    position, first_pending = len(candidates), -i
                continue
            frame = (frame, deadline, i, state, k, w, info, before, False)
            ev.lift(i)
            state, before, k, w, depth, fresh = new_state, CLEAN, k2, w2, depth + 1, True
            if depth > self.best_depth:
                self._remember(depth, frame, k, w, state)
        return True

    def _candidates(self) -> tuple[list[int], int, int]:
        """The completed operations that can come next, by return time; the first return's time and operation.

        Of those with the same effect and result only the one that returns first is tried next: in any
        linearization that puts another of them next instead, the two can swap places.
        """
        ev, ends, effect = self.events, self.end_rank, self.effect
        nxt, is_call, op_of = ev.next, ev.is_call, ev.op_of
        node, first_back = nxt[ev.head], dict[int, int]()  # effect -> the candidate with it that returns first
        while is_call[node]:
            i = op_of[node]
            known = first_back.setdefault(effect[i], i)
            if ends[i] < ends[known]:
                first_back[effect[i]] = i
            node = nxt[node]
        return sorted(first_back.values(), key=ends.__getitem__), ev.time[node], op_of[node]

    def _reader(self, candidates: list[int], state: State, before: Before) -> int:
        """A candidate that can come next and keeps the state (a read); -1 if none."""
        done, reader = self.model_done, self.reader
        for i in candidates:
            if reader[i]:
                ok, new_state = step(state, done[i])
                if ok and new_state == state and (before is CLEAN or not step(before, done[i])[0]):  # type: ignore[arg-type]
                    return i
        return -1

    def _next_info(
        self, first: int, deadline: int, state: State, k: int, w: int, info: int, before: Before
    ) -> tuple[int, State]:
        """Find the next info operation (from index `first`) worth placing; (-1, state) if none."""
        masks, twins = self.info.mask, self.info.twins
        for j in self.info.candidates(deadline, state, k, info, before):
            twin = twins[j]
            if j < first or info & twin != twin:
                continue
            _, new_state = step(state, self.model_pending[j])
            if (
                new_state != state
                and not self.obligations.strands(state, new_state, k, w, info | masks[j])
                and self.seen.visit(k, w, new_state, info | masks[j], state)
            ):
                return j, new_state
        return -1, state

    def _remember(self, depth: int, frame: Any, k: int, w: int, state: State) -> None:
        """Keep the deepest point reached (frames are immutable, so this is O(1))."""
        self.best_depth, self.best = depth, (frame, k, w, state)

    def deepest(self) -> _Deepest:
        """Describe the deepest point: the order found so far and what could not follow."""
        assert self.best is not None
        frame, k, w, state = self.best
        order: list[tuple[Operation, State]] = []
        after = state
        while frame is not None:
            frame, _, i, before, *_ = frame
            order.append((self.done[i] if i >= 0 else self.pending[-1 - i], after))
            after = before
        order.reverse()
        return _Deepest(self.initial, order, self._real_state(order, state), self._unplaced(k, w, state))

    def _real_state(self, order: list[tuple[Operation, State]], state: State) -> str:
        """Show the state, undoing the unread-value abstraction via the last write."""
        if state != self.unread:
            return _show_state(state)
        for n in range(len(order) - 1, -1, -1):
            op, after = order[n]
            before = order[n - 1][1] if n else self.initial
            if after == self.unread and (op.op == "store" or before != self.unread):
                return repr(op.value)
        return "holding a value no operation reads"

    def _unplaced(self, k: int, w: int, state: State) -> list[Operation]:
        """The ok operations that were candidates at (k, w) (none of them could be placed), and those
        still waiting to read `state`, which none of the candidates could leave for that reason."""
        left = [i for i in range(k, len(self.done)) if not w >> (i - k) & 1]
        if not left:
            return []
        deadline = min(self.obligations.ends[i] for i in left)
        needs = self.obligations.needs
        chosen = [i for i in left if self.done[i].start <= deadline or (needs[i] == state and state is not ABSENT)]
        return sorted((self.done[i] for i in chosen), key=lambda op: op.start)


def _context(deepest: _Deepest) -> list[Operation]:
    """Pick the linearized operations that explain the failure, followed by the unplaced ones."""
    window = min((op.start for op in deepest.unplaced), default=0)
    overlapping = [
        n for n, (op, _) in enumerate(deepest.order) if op.end is None or op.end >= window
    ]
    first = overlapping[0] if overlapping else len(deepest.order)
    earlier = [n for n in range(first) if _is_write(deepest, n)]
    chosen = earlier[-1:] + overlapping
    return [deepest.order[n][0] for n in chosen] + deepest.unplaced


def _is_write(deepest: _Deepest, n: int) -> bool:
    """Tell whether the n-th linearized operation set the key's state."""
    op, after = deepest.order[n]
    before = deepest.order[n - 1][1] if n else deepest.initial
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


def _timed_out(key: str, search: _KeySearch, checked: int, total: int, budget: _Budget) -> CheckResult:
    """Build the CheckResult for a check stopped by its time limit: the verdict is unknown."""
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
    if initial not in INITIAL_STATES:
        raise HistoryError(f"initial must be one of {', '.join(INITIAL_STATES)} (got {initial!r})")
    groups = partition_by_key(ops)
    budget = _Budget(timeout, progress, len(groups))
    for checked, key in enumerate(sorted(groups), start=1):
        budget.keys_done, budget.key = checked - 1, key
        done, pending = _split_relevant(groups[key])
        for start in _STARTS_TRIED[initial]:  # absent first: the usual start, and the search is faster from it
            search = _KeySearch(done, pending, start, budget)
            try:
                budget.check(0, 0, len(done))
                if search.run():
                    break
            except _OutOfTime:
                return _timed_out(key, search, checked, len(ops), budget)
        else:
            return _failure(key, search, checked, len(ops))
    return CheckResult(True, None, [], len(groups), len(ops))


_STARTS_TRIED: dict[str, tuple[State, ...]] = {"empty": (ABSENT,), "unknown": (ABSENT, Unknown())}
"""The first states searched from, in turn, for each --initial: any one that works will do."""


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
    result = "?" if op.status == "info" else repr(op.result)
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
