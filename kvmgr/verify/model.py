"""What the linearizability search needs from a model, in the manner of Porcupine.

A model says how a history splits into independent parts (`partition`), which states a part may
start in (`init`), and what an operation does to a state (`step`). States are compared with `==`
and hashed: that is the model's equality, so they must be immutable values. The search
(kvmgr/verify/search.py) knows nothing else about them and works for any model.

A model may also offer prunings for a part (`pruning`), hooks that let the search skip orders it
would otherwise try; each is named for what it means, and a model that offers none (returns None)
gets a plain, exhaustive search. The key register (kvmgr/verify/register.py) offers them all.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class Timed(Protocol):
    """An operation as the search sees it: when it was called and when it returned (None: never, outcome unknown)."""

    @property
    def start(self) -> int:
        """The call's time."""

    @property
    def end(self) -> int | None:
        """The return's time; None when it never returned."""


S = TypeVar("S", bound=Hashable)
S_contra = TypeVar("S_contra", bound=Hashable, contravariant=True)
O = TypeVar("O", bound=Timed)  # noqa: E741 - the operation type, as in Porcupine's Model
O_co = TypeVar("O_co", bound=Timed, covariant=True)


@dataclass(frozen=True, slots=True)
class Part(Generic[O]):
    """One independent sub-history: operations that completed, and those whose outcome is unknown, each by start.

    Every completed operation must be placed, at a point between its call and its return; an unknown one
    may be placed at any point after its call, or never.
    """

    name: str
    done: Sequence[O]
    pending: Sequence[O]


class Clean:
    """Marks a configuration reached by placing a completed operation (not an unknown-outcome one)."""

    def __repr__(self) -> str:
        """Show as <clean>."""
        return "<clean>"


CLEAN = Clean()


class Pruning(Protocol[S_contra, O_co]):
    """What a model knows about one part that lets the search skip orders; every hook must keep the search exact.

    `done` and `pending` are the part's operations as `step` should see them (a model may rewrite them into
    equivalent ones, in the same order); `ends` are the return times to search with (a model may tighten
    them when every linearization respects the tighter ones).
    """

    @property
    def done(self) -> Sequence[O_co]:
        """The completed operations, as `step` should see them."""

    @property
    def pending(self) -> Sequence[O_co]:
        """The unknown-outcome operations, as `step` should see them."""

    @property
    def ends(self) -> Sequence[int]:
        """The completed operations' return times to search with."""

    @property
    def reads(self) -> Sequence[bool]:
        """reads[i]: completed operation i never changes a state it can be placed in (a read): placed at once when it can."""

    @property
    def effect(self) -> Sequence[int]:
        """effect[i] == effect[j]: completed operations i and j do the same in every state (interchangeable)."""

    @property
    def twins(self) -> Sequence[int]:
        """twins[j]: the bit of an earlier unknown-outcome operation interchangeable with j (0 if none): placed first."""

    @property
    def normal_form(self) -> bool:
        """True: an unknown-outcome operation is placed only when the completed operation after it needs it."""

    def info_candidates(self, deadline: int, state: S_contra, k: int, info: int, before: S_contra | Clean) -> list[int]:
        """The unknown-outcome operations worth placing now, by index (`info`: the bits of those placed; `before`:
        CLEAN, or with normal_form the state before the unknown-outcome operation just placed)."""

    def strands(self, state: S_contra, new_state: S_contra, k: int, w: int, info: int) -> bool:
        """Tell whether leaving `state` for `new_state` leaves an operation still to place no way to succeed."""

    def doomed(self, state: S_contra, due: int, k: int, w: int, info: int) -> bool:
        """Tell whether no order can go on from `state` when operation `due` cannot be placed in it."""


class Model(Protocol[S, O]):
    """A sequential specification: how a history splits into parts, where a part starts, how a state steps."""

    def init(self) -> Sequence[S]:
        """The states a part may start in, tried in turn: a part is linearizable when it is from one of them."""

    def step(self, state: S, op: O) -> tuple[bool, S]:
        """Apply `op` to `state`: (could it happen there with its recorded result, the state after)."""

    def partition(self, ops: Sequence[O]) -> list[Part[O]]:
        """Split a history into independent parts, in the order to check them."""

    def pruning(self, part: Part[O], initial: S) -> Pruning[S, O] | None:
        """The prunings this model offers for `part` searched from `initial`; None for a plain search."""


def bits(mask: int) -> Iterator[int]:
    """The indexes of the set bits of `mask`, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def lowest(mask: int) -> int:
    """The index of the lowest set bit of `mask`, -1 if none."""
    return (mask & -mask).bit_length() - 1
