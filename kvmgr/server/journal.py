"""The seam between a Store and where its changes are kept: the Journal protocol and the in-memory default.

A Store hands every change to its journal under its lock (`append`, so the journal sees the store's order),
applies it, and acknowledges it once the commit that `append` returned is decided (None: at once).
`MemoryJournal` keeps nothing (the embedded default); `kvmgr.server.durable.SQLiteJournal` keeps the data in SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Protocol

from kvmgr.protocol.values import Value
from kvmgr.server.deferred import Deferred

Entry = tuple[Value, float | None, int]  # a key's value, when it expires (time.time() seconds; None: never), its version
Change = tuple[Value, float | None] | None  # a key's new value and expiry, or None: delete it
Changes = Mapping[str, Change]  # a write: every key it changes gets the write's revision as its version
Before = Callable[[str], Entry | None]  # a key's entry before a write (None: absent)
Undo = tuple[str, Entry | None]  # (key, its entry before a write, None if absent): the change that takes the write back
Commit = Deferred | None  # what append returns: a Deferred resolved once the write is durable (failed if its commit
#                           failed), or None when it already is (committed inside `append`, or kept in memory only)
RollBack = Callable[[BaseException], object]  # called after a deferred commit failed; what it returns is ignored


class Journal(Protocol):
    """Where a Store's changes are kept. The Store calls `append` and `fail_uncommitted` under its lock, `close` outside it.

    A journal may commit a write after `append` returns (group commit), so after the store applied it: it then
    keeps the write's undo records, and when the commit fails it calls the handler given to `on_failure`, which
    takes the store's lock, calls `fail_uncommitted` and applies the undo records it returns, newest first.
    """

    def load(self) -> tuple[dict[str, Entry], int]:
        """The entries the store starts from (none that has expired), and its revision (the last version given)."""

    def on_failure(self, handler: RollBack) -> None:
        """Call handler(failure) when a deferred commit fails."""

    def append(self, changes: Changes, before: Before, revision: int) -> Commit:
        """Take a write before the store applies it (`before(key)`: the entry now), and the store's revision after it,
        which is the version of every key it changes (a write may change no key: a fencing token); KvmgrError refuses
        it, the store stays as it was."""

    def fail_uncommitted(self, failure: BaseException) -> list[Undo]:
        """Fail every write not yet committed (its commit fails with KvmgrError); return their undo records, oldest first."""

    def pending(self) -> int:
        """How many writes wait for their commit."""

    def close(self) -> None:
        """Commit what is pending and release the storage."""


class MemoryJournal:
    """The embedded default: keeps nothing, so a write is final once the store applies it. Stateless: one serves every Store."""

    __slots__ = ()

    def load(self) -> tuple[dict[str, Entry], int]:
        """An empty store."""
        return {}, 0

    def on_failure(self, handler: RollBack) -> None:
        """Nothing can fail: the handler is never needed."""

    def append(self, changes: Changes, before: Before, revision: int) -> Commit:
        """Accept the write; nothing to wait for."""
        return None

    def fail_uncommitted(self, failure: BaseException) -> list[Undo]:
        """Nothing is ever uncommitted."""
        return []

    def pending(self) -> int:
        """Nothing ever waits."""
        return 0

    def close(self) -> None:
        """Nothing to release."""


IN_MEMORY: Final[Journal] = MemoryJournal()
