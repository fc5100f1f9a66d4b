"""The key register: the model of kvmgr's per-key operations, with the prunings that make its search fast.

Each key is an independent register whose states are ABSENT or a value, so a history is
linearizable iff every key's sub-history is (linearizability is compositional). A key starts
ABSENT ("empty"), or in an Unknown state that stands for whatever it held before ("unknown").
"fail" operations never took effect and are dropped. "info" operations (outcome unknown) may
take effect at any point after their start, or never; an info get is dropped. A completed store
whose result is None (its saved/updated answer was not recorded) writes its value, whatever the
key held; a store given a ttl is a plain store here (expiry is outside the model: check.py leaves
such keys out). add stores only into an absent key; pop returns the value and leaves the key
absent; incr/decr count from 0 on an absent key, succeed only on a number (an int or float, not a
bool) and leave their result.

Values are compared strictly (kvmgr.protocol.values.same_value: 1, 1.0 and True differ). A state
holds a str or bytes as it is and any other value as a Held, compared and hashed by its canonical
JSON text, so the search's cache never merges 1 with True; the operations are rewritten that way
once per key (canonical_operation).

The prunings (RegisterPruning), each exact: a write that alone can produce the value a read needs
returns, in effect, by the time the read does (tightened return times); written values that no
operation reads are merged into one abstract value; operations with the same effect and result are
interchangeable; a move is pruned when it leaves a state that a completed operation not placed yet
still needs, and nothing left can bring that state back in time (_Obligations); and around info
operations, a normal form (an info operation is placed only when what follows needs it) and
symmetry breaking between info operations with the same effect (and between stores of values no
operation left can observe). A key with incr or decr gets only the rules that hold for any
operation (interchangeable operations, reads placed at once, the normal form, twins): its written
values are observed by arithmetic, which the others do not follow. Every rule is checked against a
brute-force oracle (tests/test_check.py).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
from array import array
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

from kvmgr.errors import HistoryError
from kvmgr.protocol.values import Value, is_number, to_json
from kvmgr.verify.history import COUNTS, RETURNS_VALUE, Operation
from kvmgr.verify.model import CLEAN, Clean, Part, bits, lowest


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


class Held:
    """A value other than a str or bytes, as a state holds it: equal and hashed by its canonical JSON text (strict)."""

    __slots__ = ("text", "value")

    def __init__(self, value: Value) -> None:
        """Hold `value` (plain data, not a str or bytes)."""
        self.value = value
        self.text = json.dumps(to_json(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def __eq__(self, other: object) -> bool:
        """Equal to a Held of the same value, types and all (a dict's order aside)."""
        return type(other) is Held and other.text == self.text

    def __hash__(self) -> int:
        """The hash of the canonical text."""
        return hash(self.text)

    def __repr__(self) -> str:
        """Show as the value."""
        return repr(self.value)


Canonical = str | bytes | Held
State = Canonical | _Absent | Unknown
INITIAL_STATES: dict[str, tuple[State, ...]] = {"empty": (ABSENT,), "unknown": (ABSENT, Unknown())}
"""What --initial may say about every key before the history, and the first states searched from, in turn, for it
(absent first: the usual start, and the search is faster from it)."""


def canonical(value: object) -> Canonical | None:
    """A value as states hold it: a str or bytes as it is, anything else as a Held (None stays None)."""
    kind = type(value)
    if kind is str or kind is bytes or kind is Held or value is None:
        return value  # type: ignore[return-value]
    return Held(value)  # type: ignore[arg-type]


def plain_state(state: State) -> Value | _Absent | Unknown:
    """A state with its value in plain form (a Held unwrapped)."""
    return state.value if isinstance(state, Held) else state


def canonical_operation(op: Operation) -> Operation:
    """The operation with its values as states hold them (value, expected, and a get's, pop's or incr's result)."""
    value, expected = canonical(op.value), canonical(op.expected)
    result = canonical(op.result) if op.op in RETURNS_VALUE or op.op in COUNTS else op.result
    if value is op.value and expected is op.expected and result is op.result:
        return op
    return dataclasses.replace(op, value=value, expected=expected, result=result)  # type: ignore[arg-type]


def _cas_matches(state: State, expected: Canonical | None) -> bool:
    """Tell whether a cas with `expected` (None: only if absent) would swap in `state`."""
    return state is ABSENT if expected is None else state == expected


def _written(op: Operation) -> Canonical:
    """The value a store, cas or add writes (of a canonical_operation)."""
    return cast(Canonical, op.value)


def _expected(op: Operation) -> Canonical | None:
    """The value a cas expects (of a canonical_operation; None: absent)."""
    return cast(Canonical | None, op.expected)


def _counted(state: State, op: Operation) -> Held | None:
    """The number an incr or decr leaves in `state` (absent counts as 0); None where it cannot succeed (WrongType,
    or a result that is not finite)."""
    if state is ABSENT:
        current: int | float = 0
    elif type(state) is Held and is_number(state.value):
        current = state.value  # type: ignore[assignment]
    else:
        return None
    return _count(current, op)


def _count(current: int | float, op: Operation) -> Held | None:
    """current + by (incr) or current - by (decr); None if not finite."""
    by = cast(Held, op.value).value
    new = current + by if op.op == "incr" else current - by  # type: ignore[operator]
    if type(new) is float and not math.isfinite(new):
        return None
    return Held(new)


def _step_unknown(state: State, op: Operation) -> tuple[bool, State]:
    """Apply an operation whose outcome is unknown: always possible, effect per state.

    An incr on the unknown first state changes nothing here: "the value before the history was n, then the incr
    made it n + by" explains no more than "it was n + by, and the incr never happened" (check.py leaves out the
    keys where a failed cas could tell the two apart).
    """
    kind = op.op
    if kind == "store":
        return True, _written(op)
    if kind == "delete" or kind == "pop":
        return True, ABSENT
    if (kind == "cas" and _may_match(state, _expected(op))) or (kind == "add" and _may_match(state, None)):
        return True, _written(op)
    if kind in COUNTS and not isinstance(state, Unknown):
        new = _counted(state, op)
        return True, state if new is None else new
    return True, state


def _may_match(state: State, expected: Canonical | None) -> bool:
    """Tell whether a cas with `expected` can swap in `state` (an unknown one may hold it)."""
    if isinstance(state, Unknown):
        return (ABSENT if expected is None else expected) not in state.excluded
    return _cas_matches(state, expected)


def _step_from_unknown(state: Unknown, op: Operation) -> tuple[bool, State]:
    """Apply a completed operation to the unknown first state: what it observed must be allowed."""
    excluded = state.excluded.__contains__
    kind, result = op.op, op.result
    if kind == "get" or kind == "pop":
        seen = ABSENT if result is None else result
        return not excluded(seen), ABSENT if kind == "pop" else seen  # type: ignore[return-value]
    if kind == "store":
        return result != "saved" or not excluded(ABSENT), _written(op)
    if kind == "delete":
        return result is True or not excluded(ABSENT), ABSENT
    if kind in COUNTS:
        return _could_count_to(state.excluded, op), cast(Held, result)
    expected = ABSENT if kind == "add" or op.expected is None else op.expected
    if result is True:
        return not excluded(expected), _written(op)
    return True, Unknown(state.excluded | {expected})


def _could_count_to(excluded: frozenset[object], op: Operation) -> bool:
    """Tell whether some first state not excluded (absent, or a number) makes an incr/decr return its result."""
    result = cast(Held, op.result)
    if result is None or not is_number(result.value):
        return False
    for prior in _priors(op, len(excluded) + 4):
        if (ABSENT if prior is None else Held(prior)) not in excluded and _counted(
            ABSENT if prior is None else Held(prior), op
        ) == result:
            return True
    return False


def _priors(op: Operation, spread: int) -> Iterator[int | float | None]:
    """The states (None: absent) an incr/decr could have counted from to its result: absent, and the numbers
    around result -/+ by (ints exactly; floats and ints within `spread` steps, as rounding allows several)."""
    yield None
    result, by = cast(int | float, cast(Held, op.result).value), cast(int | float, cast(Held, op.value).value)
    back = result - by if op.op == "incr" else result + by
    if type(back) is int:
        yield back
        return
    if type(result) is int or not math.isfinite(back):
        return
    ahead = behind = back
    for _ in range(spread):
        yield from _with_ints(ahead, spread)
        if behind != ahead:
            yield from _with_ints(behind, spread)
        ahead, behind = math.nextafter(ahead, math.inf), math.nextafter(behind, -math.inf)


def _with_ints(number: float, spread: int) -> Iterator[int | float]:
    """A float, and when it is whole the ints that round to it (around it, within `spread`)."""
    yield number
    if number.is_integer():
        whole = int(number)
        yield from (whole + step for step in range(-spread, spread + 1))


def _step(state: State, op: Operation) -> tuple[bool, State]:
    """Apply `op` (canonical_operation) to one key's state: (could it happen now with its result, new state)."""
    if op.status != "ok":
        return _step_unknown(state, op) if op.status == "info" else (True, state)
    if isinstance(state, Unknown):
        return _step_from_unknown(state, op)
    kind, result = op.op, op.result
    if kind == "get":
        return (state is ABSENT if result is None else state == result), state
    if kind == "store":
        return result is None or (result == "saved") == (state is ABSENT), _written(op)
    if kind == "delete":
        return (result is True) == (state is not ABSENT), ABSENT
    if kind == "cas":
        swapped = _cas_matches(state, op.expected)  # type: ignore[arg-type]
        return swapped == (result is True), (_written(op) if swapped else state)
    if kind == "add":
        added = state is ABSENT
        return added == (result is True), (_written(op) if added else state)
    if kind == "pop":
        return (state is ABSENT if result is None else state == result), ABSENT
    new = _counted(state, op)
    return new is not None and new == result, (new if new is not None else state)


def step(state: object, op: Operation) -> tuple[bool, object]:
    """Apply `op` to one key's state, both in plain values (ABSENT, an Unknown, or a value): (could it happen now
    with its result, new state)."""
    ok, after = _step(canonical(state) if type(state) is not _Absent and type(state) is not Unknown else state,  # type: ignore[arg-type]
                      canonical_operation(op))
    return ok, plain_state(after)


def partition_by_key(ops: Iterable[Operation]) -> dict[str, list[Operation]]:
    """Group operations by key, keeping their order."""
    groups: dict[str, list[Operation]] = defaultdict(list)
    for op in ops:
        groups[op.key].append(op)
    return dict(groups)


def _split_relevant(key: str, ops: list[Operation]) -> Part[Operation]:
    """The key's part: ok ops, and info ops that may change the state, each by start; fail ops and info gets go."""
    done = [op for op in ops if op.status == "ok"]
    pending = [op for op in ops if op.status == "info" and op.op != "get"]
    for op in done:
        if op.end is None:
            raise HistoryError(f"operation {op!r} is ok but has no end time")
    done.sort(key=lambda op: op.start)
    pending.sort(key=lambda op: op.start)
    return Part(key, done, pending)


class KeyRegister:
    """The model of a key-value history: one register per key, starting absent ("empty") or unknown."""

    step = staticmethod(_step)

    def __init__(self, initial: str = "unknown") -> None:
        """`initial`: what every key held before the history (HistoryError if it is neither empty nor unknown)."""
        if initial not in INITIAL_STATES:
            raise HistoryError(f"initial must be one of {', '.join(INITIAL_STATES)} (got {initial!r})")
        self.initial = initial

    def init(self) -> tuple[State, ...]:
        """The first states tried: absent, and for an unknown start, then Unknown()."""
        return INITIAL_STATES[self.initial]

    def partition(self, ops: Sequence[Operation]) -> list[Part[Operation]]:
        """One part per key, in sorted order."""
        groups = partition_by_key(ops)
        return [_split_relevant(key, groups[key]) for key in sorted(groups)]

    def pruning(self, part: Part[Operation], initial: State) -> RegisterPruning:
        """Every register pruning; return times are tightened only from an absent start."""
        return RegisterPruning(part, initial is ABSENT)


def _tightened_ends(done: list[Operation], pending: list[Operation]) -> list[int]:
    """The return times to search with, from an empty start: a write that alone can produce the value a
    completed read needs must come before that read, so it returns, in effect, by the time the read does.

    Every linearization keeps the tightened real-time order too, so the search stays exact; long writes
    whose value is read soon stop being candidates for long.
    """
    writers: dict[Canonical, list[int]] = defaultdict(list)
    for i, op in enumerate(done):
        if op.op == "store" or (op.op in ("cas", "add") and op.result is True):
            writers[_written(op)].append(i)
    maybe_written = {op.value for op in pending}
    ends = _ends(done)
    for op in done:
        needed = needed_state(op)
        found = writers.get(needed) if isinstance(needed, str | bytes | Held) else None
        if found and len(found) == 1 and needed not in maybe_written:
            i = found[0]
            ends[i] = max(done[i].start, min(ends[i], cast(int, op.end)))
    return ends


def _ends(done: list[Operation]) -> list[int]:
    """The return times of completed operations (every one is known)."""
    return [cast(int, op.end) for op in done]


UNREAD = "\x00unread"
"""Stands for every value that no operation of the key ever reads (see _abstract)."""


def _abstract(done: list[Operation], pending: list[Operation]) -> tuple[list[Operation], list[Operation], str]:
    """Replace written values that no get, pop or cas ever observes by one token (not for a key with incr/decr).

    States holding two such values are indistinguishable by every operation of the key, so
    merging them is exact; it lets the cache and the twin rule treat their writers alike.
    """
    read = {op.result for op in done if op.op in RETURNS_VALUE} | {op.expected for op in done + pending if op.op == "cas"}
    token = UNREAD
    while token in read:
        token += "\x00"

    def model(op: Operation) -> Operation:
        if op.op not in ("store", "cas", "add") or op.value in read:
            return op
        return Operation(  # not dataclasses.replace: this runs for most writes, and replace is several times slower
            client=op.client, op=op.op, key=op.key, value=token, expected=op.expected, result=op.result, status=op.status,
            start=op.start, end=op.end, ttl=op.ttl,
        )

    return [model(op) for op in done], [model(op) for op in pending], token


def _earlier_twins(pending: list[Operation], masks: list[int]) -> list[int]:
    """For each info operation, the mask of the previous one with the same effect (or 0).

    Info operations with the same effect are interchangeable, and an earlier-started one is
    available whenever a later one is, so they are placed in start order (symmetry breaking).
    """
    last: dict[tuple[str, Canonical | None, Canonical | None], int] = {}
    twins = []
    for j, op in enumerate(pending):
        effect = (op.op, _expected(op), cast(Canonical | None, op.value))
        twins.append(last.get(effect, 0))
        last[effect] = masks[j]
    return twins


def _last_readers(done: list[Operation], pending: list[Operation]) -> dict[Canonical, float]:
    """For each value some operation observes, the index of the last completed one that does.

    A value an info cas expects may be observed whenever that cas is placed: +infinity.
    """
    last: dict[Canonical, float] = {}
    for i, op in enumerate(done):
        seen = op.result if op.op in RETURNS_VALUE else op.expected if op.op == "cas" else None
        if isinstance(seen, str | bytes | Held):
            last[seen] = i
    for op in pending:
        if op.op == "cas" and op.expected is not None:
            last[_expected(op)] = math.inf  # type: ignore[index]
    return last


class _InfoIndex:
    """Which info operations are worth trying where no completed operation can come next.

    Stores and deletes (and pops: the same effect) only right after a completed operation (the
    normal form); of the deletes, the first one free; of the stores whose value no operation left
    can observe (unread values, or values whose readers are all among the first k, all placed),
    one stands for all, as they are interchangeable; the other stores each; of the cas (and adds:
    a cas from absent), those that would swap. Bit masks over the info operations (by start) keep
    this cheap. (Not for a key with incr/decr: see RegisterPruning.)
    """

    def __init__(self, done: list[Operation], pending: list[Operation], unread: Canonical) -> None:
        """Index the info operations `pending` (sorted by start) of a key with completed `done`."""
        self.start = [op.start for op in pending]
        mask = [1 << j for j in range(len(pending))]
        self.twins = _earlier_twins(pending, mask)
        last = _last_readers(done, pending)
        self.last_reader = [last.get(_written(op), -1) if op.op == "store" else -1 for op in pending]
        self.unread_stores = self.read_stores = self.deletes = 0
        self.cas_by_expected: dict[State, int] = defaultdict(int)
        for j, op in enumerate(pending):
            if op.op in ("delete", "pop"):
                self.deletes |= mask[j]
            elif op.op in ("cas", "add"):
                self.cas_by_expected[ABSENT if op.expected is None else _expected(op)] |= mask[j]  # type: ignore[index]
            elif op.value == unread:
                self.unread_stores |= mask[j]
            else:
                self.read_stores |= mask[j]

    def candidates(self, deadline: int, state: State, k: int, info: int, before: State | Clean) -> list[int]:
        """The info operations worth trying, by index: the same for the same configuration."""
        free = ((1 << bisect.bisect_right(self.start, deadline)) - 1) & ~info
        found = list(bits(free & self._swapping(state)))
        if before is CLEAN:
            stand_in = lowest(free & self.unread_stores)
            for j in bits(free & self.read_stores):
                if self.last_reader[j] >= k:
                    found.append(j)
                elif stand_in < 0:
                    stand_in = j
            found += [j for j in (stand_in, lowest(free & self.deletes)) if j >= 0]
        return sorted(found)

    def _swapping(self, state: State) -> int:
        """The mask of the info cas that would swap in `state`."""
        if isinstance(state, Unknown):
            return sum(mask for expected, mask in self.cas_by_expected.items() if expected not in state.excluded)
        return self.cas_by_expected.get(state, 0)


class _Obligations:
    """States that completed operations still need, and whether they can still get them in time.

    A completed get or pop of v, or a cas that swapped from v, needs the key to hold v at its point;
    a get or pop of nothing, a store that saved, a delete of nothing, an add that added or a cas
    from absent needs it absent; a store that updated, a delete that deleted, an add that did not
    or a cas that found the key present need it to hold some value (PRESENT). Leaving such a state
    is dead when a reader of it is not placed yet and every operation left that could bring the
    state back (a writer of v; a delete or pop; a store, saved or of unrecorded result, an add, or a
    cas that can fill an absent key) started after that reader returned: it could not come before
    the reader. (Not for a key with incr/decr: see RegisterPruning.)
    """

    def __init__(self, done: list[Operation], pending: list[Operation]) -> None:
        """Index, per needed state, its readers (with the least return time from each on) and its writers."""
        self.done, self.pending_start = done, [op.start for op in pending]
        self.ends = _ends(done)
        readers: dict[object, list[int]] = defaultdict(list)
        self.needs: list[State | None] = [needed_state(op) for op in done]
        for i, needed in enumerate(self.needs):
            if needed is not None:
                readers[needed].append(i)
            if _needs_a_value(done[i]):
                readers[PRESENT].append(i)
        self.readers = dict(readers)
        self._timing: dict[object, tuple[list[int], list[int]]] = {}
        self.writers: dict[object, list[int]] = defaultdict(list)
        for i, op in enumerate(done):
            written = _completed_writes(op)
            if written is not None:
                self.writers[written].append(i)
            if (op.op == "store" and op.result != "updated") or (op.op in ("cas", "add") and op.result is True and op.expected is None):
                self.writers[PRESENT].append(i)
        self.info_writers: dict[object, int] = defaultdict(int)
        for j, op in enumerate(pending):
            self.info_writers[ABSENT if op.op in ("delete", "pop") else op.value] |= 1 << j
            if op.op in ("store", "add") or (op.op == "cas" and op.expected is None):
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
            least = self.pending_start[lowest(free)]
        writers = self.writers.get(state, ())
        for x in writers[bisect.bisect_left(writers, k):]:
            if x - k >= w.bit_length() or not w >> (x - k) & 1:
                return min(least, self.done[x].start)
        return least


def _completed_writes(op: Operation) -> State | None:
    """The state a completed operation (not incr/decr) may leave a different one for: None if it never changes it."""
    if op.op == "store" or (op.op in ("cas", "add") and op.result is True):
        return _written(op)
    if (op.op == "delete" and op.result) or (op.op == "pop" and op.result is not None):
        return ABSENT
    return None


def _needs_a_value(op: Operation) -> bool:
    """Tell whether a completed operation needs the key to hold some value, whichever."""
    return (op.op == "store" and op.result == "updated") or (op.op == "delete" and op.result is True) or (
        op.op in ("cas", "add") and op.result is False and op.expected is None
    )


def needed_state(op: Operation) -> State | None:
    """The state a completed operation needs just before it, when one state only will do (else None)."""
    if op.op in RETURNS_VALUE:
        return ABSENT if op.result is None else cast(Canonical, op.result)
    if op.op == "cas" and op.result is True:
        return ABSENT if op.expected is None else _expected(op)
    if (op.op == "store" and op.result == "saved") or (op.op == "delete" and op.result is False) or (
        op.op == "add" and op.result is True
    ):
        return ABSENT
    return None


class RegisterPruning:
    """The register's prunings for one key (see the module docstring); the hooks of model.Pruning.

    For a key with incr or decr only the rules that hold for any operation are kept: an ok incr needs one of
    several states and writes a number that later ones do arithmetic on, which the abstraction of unread
    values, the tightened return times, the obligations and the stand-in stores do not follow.
    """

    normal_form = True

    def __init__(self, part: Part[Operation], tighten: bool) -> None:
        """Abstract unread values, index the info operations and the obligations; tighten return times if asked."""
        done, pending = [canonical_operation(op) for op in part.done], [canonical_operation(op) for op in part.pending]
        self.counting = any(op.op in COUNTS for op in itertools.chain(done, pending))
        self.unread: Canonical | None = None
        if self.counting:
            self.done, self.pending = done, pending
            self.ends = _ends(done)
        else:
            self.done, self.pending, self.unread = _abstract(done, pending)
            self.ends = _tightened_ends(self.done, self.pending) if tighten else _ends(done)
        self.reads = [op.op == "get" or op.result is False or (op.op == "pop" and op.result is None) for op in done]
        effects: dict[tuple[object, ...], int] = {}
        self.effect = array("q", (effects.setdefault((op.op, op.expected, op.value, op.result), len(effects)) for op in self.done))
        if self.counting:
            self.twins = _earlier_twins(self.pending, [1 << j for j in range(len(self.pending))])
            self._starts = [op.start for op in self.pending]
            return
        info = _InfoIndex(self.done, self.pending, cast(Canonical, self.unread))
        self.twins, self.info_candidates = info.twins, info.candidates  # type: ignore[method-assign]
        self.obligations = _Obligations(self.done, self.pending)
        self.strands, self.doomed = self.obligations.strands, self.obligations.doomed  # type: ignore[method-assign]

    def info_candidates(self, deadline: int, state: State, k: int, info: int, before: State | Clean) -> list[int]:
        """(A key with incr/decr) every unknown-outcome operation called by `deadline` and not placed yet."""
        return list(bits(((1 << bisect.bisect_right(self._starts, deadline)) - 1) & ~info))

    def strands(self, state: State, new_state: State, k: int, w: int, info: int) -> bool:
        """(A key with incr/decr) never known."""
        return False

    def doomed(self, state: State, due: int, k: int, w: int, info: int) -> bool:
        """(A key with incr/decr) never known."""
        return False
