"""The linearizability search for any model (kvmgr/verify/model.py): Wing & Gong, as in Lowe's and Porcupine's checkers.

A history is split by the model into parts, each searched on its own. The search tries, at each
point, the completed operations called before the first pending return, earliest return first,
and unknown-outcome operations when none of those leads anywhere. The cache of (operations placed,
state) holds each set of placed operations as the first one not placed plus a bitmask of the few
after it (see placed), so memory grows with the history's length times its concurrency, not its
square; past a bound it forgets its oldest half (costing time, never exactness). Having placed
fewer unknown-outcome operations is never worse (dominance). Everything else a model may offer
(model.Pruning) is optional: a model that offers nothing gets a plain, exhaustive search.

Real-time order: operation A precedes B iff A.end < B.start; equal timestamps count as concurrent.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic

from kvmgr.verify.model import CLEAN, Clean, Model, O, Part, Pruning, S, bits


@dataclass(frozen=True)
class CheckProgress:
    """How far a long check got: parts (keys) finished, and operations placed on the one being searched."""

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
"""Configurations a part's search remembers at least (4 per completed operation if more; each takes about 200 bytes)."""
Progress = Callable[[CheckProgress], None]


class OutOfTime(Exception):
    """The time limit passed during a search."""


class Budget:
    """The time limit and the progress reports of one check."""

    def __init__(self, timeout: float | None, progress: Progress | None, keys: int) -> None:
        """Start the clock."""
        self.started = time.monotonic()
        self.deadline = math.inf if timeout is None else self.started + timeout
        self.progress, self.keys = progress, keys
        self.next_report = self.started + PROGRESS_EVERY
        self.keys_done, self.key = 0, ""

    def check(self, placed: int, deepest: int, key_operations: int) -> None:
        """Raise OutOfTime past the deadline; report progress when it is time to."""
        now = time.monotonic()
        if now >= self.deadline:
            raise OutOfTime
        if self.progress is not None and now >= self.next_report:
            self.next_report = now + PROGRESS_EVERY
            self.progress(CheckProgress(self.keys_done, self.keys, self.key, placed, deepest, key_operations, now - self.started))


class Plain(Generic[S, O]):
    """No pruning: what the search uses for a model that offers none (every hook answers 'try everything')."""

    normal_form = False

    def __init__(self, part: Part[O]) -> None:
        """The part's operations as they are; every unknown-outcome operation is worth trying once started."""
        self.done, self.pending = part.done, part.pending
        self.ends = [_known_end(op.end) for op in part.done]
        self.reads = [False] * len(part.done)
        self.effect = list(range(len(part.done)))
        self.twins = [0] * len(part.pending)
        self._starts = [op.start for op in part.pending]

    def info_candidates(self, deadline: int, state: S, k: int, info: int, before: S | Clean) -> list[int]:
        """The unknown-outcome operations called by `deadline` and not placed yet."""
        return list(bits(((1 << bisect.bisect_right(self._starts, deadline)) - 1) & ~info))

    def strands(self, state: S, new_state: S, k: int, w: int, info: int) -> bool:
        """Never known."""
        return False

    def doomed(self, state: S, due: int, k: int, w: int, info: int) -> bool:
        """Never known."""
        return False


def _known_end(end: int | None) -> int:
    """The return time of a completed operation (ValueError if it has none)."""
    if end is None:
        raise ValueError("a completed operation has no return time")
    return end


class _EventList:
    """Call and return events of completed operations, sorted, in a doubly linked list."""

    def __init__(self, starts: list[int], ends: Sequence[int]) -> None:
        """Sort events by time, calls before returns at equal times (compact arrays: O(n) machine words)."""
        count = 2 * len(starts)
        times = [time for start, end in zip(starts, ends, strict=True) for time in (start, end)]  # event e is op e >> 1
        order = [2 * time + (e & 1) for e, time in enumerate(times)]  # calls before returns at equal times
        events = sorted(range(count), key=order.__getitem__)
        self.head, self.tail = 0, count + 1
        self.next = array("q", range(1, count + 2))
        self.next.append(-1)
        self.prev = array("q", range(-1, count + 1))
        self.time = [0, *(times[e] for e in events), 0]
        self.is_call = bytes([0, *(1 - (e & 1) for e in events), 0])
        self.op_of = array("q", [-1, *(e >> 1 for e in events), -1])
        self.call_node = array("q", bytes(8 * len(starts)))
        self.return_node = array("q", bytes(8 * len(starts)))
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


class _Seen(Generic[S]):
    """Configurations already explored, with dominance pruning over unknown-outcome (info) operations.

    A configuration is (completed operations placed, state, info operations placed, before), where
    `before` is CLEAN, or (normal form) the state before the info operation just placed (whatever
    comes next must need that info operation). Info operations are optional and never constrain
    real-time order, so having placed fewer of them is never worse: a configuration is skipped
    when one with the same key and a subset of its info operations was explored, and a CLEAN
    configuration (searched without restriction) also covers the others. The completed
    operations placed are (k, w), see placed; each key holds one info set, or a list. Past
    `limit` configurations the older half is forgotten: that costs time, never exactness (a
    configuration explored twice fails twice), and it bounds memory on hopeless histories.
    """

    def __init__(self, limit: int) -> None:
        """Start empty; remember at most about `limit` configurations."""
        self._info_sets: dict[tuple[int, int, S, S | Clean], int | list[int]] = {}
        self.limit = limit

    def _forget_older_half(self) -> None:
        """Drop the configurations recorded first."""
        for key in list(itertools.islice(self._info_sets, len(self._info_sets) // 2)):
            del self._info_sets[key]

    def _covered(self, key: tuple[int, int, S, S | Clean], info: int) -> bool:
        """Tell whether an explored configuration with `key` used a subset of `info`."""
        known = self._info_sets.get(key)
        if known is None:
            return False
        if isinstance(known, int):
            return known & ~info == 0
        return any(explored & ~info == 0 for explored in known)

    def visit(self, k: int, w: int, state: S, info: int, before: S | Clean) -> bool:
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


def placed(k: int, w: int, i: int) -> tuple[int, int]:
    """(k, w) after placing completed operation i, where k is the first completed operation (by start) not
    placed and bit t of w says whether operation k + t is.

    Every set of placed operations is closed under real-time order, so the ones after k all
    overlap operation k: w has as many bits as the history is concurrent, not as it is long.
    """
    w |= 1 << (i - k)
    if i == k:
        ones = (~w & (w + 1)).bit_length() - 1
        k, w = k + ones, w >> ones
    return k, w


@dataclass(slots=True)
class Frame(Generic[S]):
    """One move on the search's stack, never changed once made: from the configuration (state, k, w, info, before),
    operation `op` was placed (an index into the part's pending operations when `optional`, else into its completed
    ones); `forced`: no alternative was left to try there. (k, w): the completed operations placed (see placed);
    info: the bits of the info operations placed; before: CLEAN, or the state before the info operation just placed."""

    parent: Frame[S] | None
    deadline: int
    op: int
    optional: bool
    forced: bool
    state: S
    k: int
    w: int
    info: int
    before: S | Clean


@dataclass(frozen=True, slots=True)
class Deepest(Generic[S, O]):
    """The furthest point a search reached: the operations placed in order, each with the state after it;
    the state there; and the completed operations not placed (indexes into the part's)."""

    initial: S
    order: list[tuple[O, S]]
    state: S
    left: list[int]


class Search(Generic[S, O]):
    """Depth-first search for a linearization of one part's operations from one first state, with a cache."""

    def __init__(self, model: Model[S, O], part: Part[O], initial: S, budget: Budget) -> None:
        """Prepare events, bit masks and the search state from the model's prunings (or none)."""
        self.part, self.initial, self.budget, self.step = part, initial, budget, model.step
        pruning = model.pruning(part, initial)
        self.pruning: Pruning[S, O] = Plain[S, O](part) if pruning is None else pruning
        self.done, self.pending = self.pruning.done, self.pruning.pending
        ends = self.pruning.ends
        self.events = _EventList([op.start for op in part.done], ends)
        self.end_rank = array("q", bytes(8 * len(ends)))
        for rank, i in enumerate(sorted(range(len(ends)), key=ends.__getitem__)):
            self.end_rank[i] = rank
        self.masks = [1 << j for j in range(len(self.pending))]
        self.seen: _Seen[S] = _Seen(max(SEEN_LIMIT, 4 * len(part.done)))
        self.best_frame: Frame[S] | None = None
        self.best_depth, self.best_k, self.best_w, self.best_state = -1, 0, 0, initial

    def run(self) -> bool:
        """Search; True if some order of the operations explains every result (OutOfTime past the limit).

        The candidates are the completed operations called before the first return not yet
        placed; they are tried by return time, earliest first, and info operations only when
        none of them leads anywhere. With the model's normal form, an info operation is followed
        by a completed operation that is impossible without it, or by another info operation.
        A completed operation that the model calls a read and that can come next is placed at
        once, with no alternative tried: moving it to the front of any linearization that
        places it later keeps that linearization valid. A configuration is dropped at once when
        the first operation due to return cannot come next and the model says leaving this state
        is fatal (doomed); a move, when the model says it strands an operation (strands).
        """
        ev, done, seen, budget, pruning, step = self.events, self.done, self.seen, self.budget, self.pruning, self.step
        head, tail, total, nxt = ev.head, ev.tail, len(done), ev.next
        state, k, w, info, depth = self.initial, 0, 0, 0, 0
        before: S | Clean = CLEAN
        frame: Frame[S] | None = None
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
                if not step(state, done[due])[0] and pruning.doomed(state, due, k, w, info):
                    candidates = []  # and no info operation either: this configuration cannot be completed
                    deadline = -1
                i = self._reader(candidates, state, before)
                if i >= 0:
                    k2, w2 = placed(k, w, i)
                    if seen.visit(k2, w2, state, info, CLEAN):
                        frame = Frame(frame, deadline, i, False, True, state, k, w, info, before)
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
                    k2, w2 = placed(k, w, i)
                    if not pruning.strands(state, new_state, k2, w2, info) and seen.visit(k2, w2, new_state, info, CLEAN):
                        break
            else:
                j, new_state = self._next_info(first_pending, deadline, state, k, w, info, before)
                if j >= 0:
                    frame = Frame(frame, deadline, j, True, False, state, k, w, info, before)
                    before = state if pruning.normal_form else CLEAN
                    state, info, fresh = new_state, info | self.masks[j], True
                    continue
                forced = True
                while forced:
                    if frame is None:
                        return False
                    state, k, w, info, before, deadline = frame.state, frame.k, frame.w, frame.info, frame.before, frame.deadline
                    i, optional, forced = frame.op, frame.optional, frame.forced
                    frame = frame.parent
                    if not optional:
                        ev.unlift(i)
                        depth -= 1
                if optional:
                    position, first_pending = len(candidates), i + 1
                else:
                    candidates, deadline, _ = self._candidates()
                    position, first_pending = candidates.index(i) + 1, 0
                continue
            frame = Frame(frame, deadline, i, False, False, state, k, w, info, before)
            ev.lift(i)
            state, before, k, w, depth, fresh = new_state, CLEAN, k2, w2, depth + 1, True
            if depth > self.best_depth:
                self._remember(depth, frame, k, w, state)
        return True

    def _candidates(self) -> tuple[list[int], int, int]:
        """The completed operations that can come next, by return time; the first return's time and operation.

        Of those with the same effect only the one that returns first is tried next: in any
        linearization that puts another of them next instead, the two can swap places.
        """
        ev, ends, effect = self.events, self.end_rank, self.pruning.effect
        nxt, is_call, op_of = ev.next, ev.is_call, ev.op_of
        first_back: dict[int, int] = {}  # effect -> the candidate with it that returns first
        node = nxt[ev.head]
        while is_call[node]:
            i = op_of[node]
            known = first_back.setdefault(effect[i], i)
            if ends[i] < ends[known]:
                first_back[effect[i]] = i
            node = nxt[node]
        return sorted(first_back.values(), key=ends.__getitem__), ev.time[node], op_of[node]

    def _reader(self, candidates: list[int], state: S, before: S | Clean) -> int:
        """A candidate that can come next and keeps the state (a read); -1 if none."""
        done, reads, step = self.done, self.pruning.reads, self.step
        for i in candidates:
            if reads[i]:
                ok, new_state = step(state, done[i])
                if ok and new_state == state and (before is CLEAN or not step(before, done[i])[0]):  # type: ignore[arg-type]
                    return i
        return -1

    def _next_info(self, first: int, deadline: int, state: S, k: int, w: int, info: int, before: S | Clean) -> tuple[int, S]:
        """Find the next info operation (from index `first`) worth placing; (-1, state) if none."""
        masks, twins, pruning = self.masks, self.pruning.twins, self.pruning
        after = state if pruning.normal_form else CLEAN
        for j in pruning.info_candidates(deadline, state, k, info, before):
            twin = twins[j]
            if j < first or info & twin != twin:
                continue
            _, new_state = self.step(state, self.pending[j])
            if (
                new_state != state
                and not pruning.strands(state, new_state, k, w, info | masks[j])
                and self.seen.visit(k, w, new_state, info | masks[j], after)
            ):
                return j, new_state
        return -1, state

    def _remember(self, depth: int, frame: Frame[S] | None, k: int, w: int, state: S) -> None:
        """Keep the deepest point reached: its top frame and the configuration it led to (frames are never changed
        once made, so this is O(1))."""
        self.best_depth, self.best_frame, self.best_k, self.best_w, self.best_state = depth, frame, k, w, state

    def deepest(self) -> Deepest[S, O]:
        """The deepest point: the order found so far, the state there and the completed operations left."""
        order: list[tuple[O, S]] = []
        frame, after, k, w = self.best_frame, self.best_state, self.best_k, self.best_w
        while frame is not None:
            order.append((self.part.pending[frame.op] if frame.optional else self.part.done[frame.op], after))
            after = frame.state
            frame = frame.parent
        order.reverse()
        left = [i for i in range(k, len(self.done)) if not w >> (i - k) & 1]
        return Deepest(self.initial, order, self.best_state, left)


@dataclass
class Outcome(Generic[S, O]):
    """A whole check's answer: 'ok', 'illegal' or 'unknown' (the time limit came first); the parts checked
    (the last one is the one that was illegal or ran out of time); and for those, its search."""

    verdict: str
    parts: int
    search: Search[S, O] | None
    budget: Budget


Solved = Callable[[Search[S, O]], None]
"""Called with each part's search that found a linearization (its deepest() is then the whole order)."""


def check(
    model: Model[S, O], ops: Sequence[O], timeout: float | None = None, progress: Progress | None = None,
    solved: Solved[S, O] | None = None,
) -> Outcome[S, O]:
    """Check a history part by part in the model's order; stop at the first illegal part, or at `timeout` seconds.

    `solved`, if given, is called with the search of each part found linearizable (to read its order).
    """
    parts = model.partition(ops)
    budget = Budget(timeout, progress, len(parts))
    for checked, part in enumerate(parts, start=1):
        budget.keys_done, budget.key = checked - 1, part.name
        outcome = _check_part(model, part, budget, checked, solved)
        if outcome is not None:
            return outcome
    return Outcome("ok", len(parts), None, budget)


def _check_part(
    model: Model[S, O], part: Part[O], budget: Budget, checked: int, solved: Solved[S, O] | None
) -> Outcome[S, O] | None:
    """Search one part from each of the model's first states in turn; None if one works."""
    search: Search[S, O] | None = None
    for start in model.init():
        search = Search(model, part, start, budget)
        try:
            budget.check(0, 0, len(part.done))
            if search.run():
                if solved is not None:
                    solved(search)
                return None
        except OutOfTime:
            return Outcome("unknown", checked, search, budget)
    return Outcome("illegal", checked, search, budget)
