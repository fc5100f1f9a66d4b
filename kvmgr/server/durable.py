"""Durable mode: the store's data in SQLite (WAL) inside a data directory, written before writes are acknowledged.

Table kv holds each key's value (str as text, bytes as a blob, any other value in kvmgr.protocol.values' byte form
with `encoded` set), its absolute expiry (time.time() seconds, NULL: never) and its version; table meta holds the
store's revision. A database from an earlier version gets the new columns when it is opened.

`SQLiteJournal` is a kvmgr.server.journal.Journal. Every change goes through one path: `append(changes, before)` under
the store's lock (so the journal's order is the store's order); a write is acknowledged once the commit it
returns is decided (a kvmgr.server.deferred.Deferred, or None when the write is already committed).
- fsync "always": each write is committed and fsynced inside `append`.
- fsync "batch": a committer thread commits everything appended since its last commit in one
  transaction (group commit); the write's Deferred is resolved from that thread once the commit holding it is
  durable, so the server's loop never waits for an fsync.
- fsync "off": each write is committed inside `append`; the operating system decides when it reaches disk.

A commit that fails (a full disk, an I/O error) fails every write not yet committed and is logged once.
In "always" and "off" that is the one write, refused before the store changes. In "batch" the store has
already applied the writes of the failed group and of any group queued behind it (later writes may
depend on them), so the journal, which kept their undo records, hands them back to the store, which restores the last
committed state under its lock (see `on_failure`). Nothing sticks: the next commit is tried afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from kvmgr.config import COMMIT_TIMEOUT
from kvmgr.errors import ConfigError, KvmgrError
from kvmgr.protocol.values import Value, ValueRuleError, decode, encode
from kvmgr.server.deferred import Deferred
from kvmgr.server.journal import Before, Changes, Commit, Entry, RollBack, Undo

FSYNC_MODES = ("always", "batch", "off")
DATABASE_NAME = "kvmgr.sqlite3"
LOCK_NAME = "kvmgr.lock"

log = logging.getLogger("kvmgr.server.durable")


class CommitGroup:
    """Writes committed in one transaction: their changes, their undo records, and the outcome, resolved once decided."""

    __slots__ = ("changes", "outcome", "revision", "undo", "writes")

    def __init__(self) -> None:
        self.changes: list[tuple[str, Entry | None]] = []
        self.undo: list[Undo] = []
        self.writes = 0
        self.revision = 0
        self.outcome = Deferred()


class SQLiteJournal:
    """The durable copy of a Store, one SQLite database in a data directory held by one server at a time."""

    def __init__(self, data_dir: Path, fsync: str = "always") -> None:
        if fsync not in FSYNC_MODES:
            raise ConfigError(f"--fsync must be one of {', '.join(FSYNC_MODES)} (got {fsync!r})")
        self.fsync = fsync
        self.path = data_dir / DATABASE_NAME
        self._lock_file = _lock_directory(data_dir)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'OFF' if fsync == 'off' else 'FULL'}")
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID")
            _add_missing_columns(self._db)
        except sqlite3.Error as exc:
            self._lock_file.close()
            raise ConfigError(f"cannot use {self.path}: {exc}") from None
        self._mutex = threading.Lock()
        self._work = threading.Condition(self._mutex)  # the committer waits here for writes
        self._open = CommitGroup()  # collecting writes
        self._committing: CommitGroup | None = None
        self._closing = False
        self._on_failure: RollBack = self.fail_uncommitted
        self._committer: threading.Thread | None = None
        if fsync == "batch":
            self._committer = threading.Thread(target=self._commit_batches, name="kvmgr-group-commit", daemon=True)
            self._committer.start()

    def on_failure(self, handler: RollBack) -> None:
        """Call handler(failure) from the committer after a group commit fails (batch mode).

        The handler must hold the store's lock while it calls `fail_uncommitted` and applies the undo
        records it returns, so that no write or read comes between the failure and the rollback.
        """
        self._on_failure = handler

    def load(self) -> tuple[dict[str, Entry], int]:
        """Every entry stored and not expired (each value as the type it was stored as), and the store's revision.

        ConfigError, naming the file, if a row is not one kvmgr writes (another tool wrote a non-text key, say).
        """
        try:
            self._check_rows()
            revision = self._revision()
            expired = [(key, None) for (key,) in self._db.execute("SELECT key FROM kv WHERE expires <= ?", (time.time(),))]
            self._commit(expired, revision)
            entries = {key: (_stored_value(key, value, encoded), expires, version) for key, value, encoded, expires, version in
                       self._db.execute("SELECT key, value, encoded, expires, version FROM kv")}
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read the data in {self.path}: {exc}") from None
        return entries, revision

    def _revision(self) -> int:
        """The last revision committed: the one kept in meta, or the newest version in kv, whichever is larger."""
        kept = self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        newest = self._db.execute("SELECT max(version) FROM kv").fetchone()[0]
        return max(int(kept[0]) if kept else 0, int(newest or 0))

    def _check_rows(self) -> None:
        """ConfigError for the first row whose key is not non-empty text or whose value is neither text nor a blob."""
        row = self._db.execute(
            "SELECT typeof(key), typeof(value), CAST(key AS BLOB) FROM kv "
            "WHERE typeof(key) != 'text' OR key = '' OR typeof(value) NOT IN ('text', 'blob') LIMIT 1"
        ).fetchone()
        if row is None:
            return
        key_type, value_type, raw_key = row
        shown = _shorten(raw_key)
        if key_type != "text":
            problem = f"a row has a key of type {key_type} ({shown}), not text"
        elif not raw_key:
            problem = "a row has an empty key"
        else:
            problem = f"the value of key {shown} is of type {value_type}, not text or blob"
        raise ConfigError(f"cannot use {self.path}: {problem}; kvmgr did not write it (was the database changed by another tool?)")

    def append(self, changes: Changes, before: Before, revision: int) -> Commit:
        """Take a write (under the store's lock, before the store applies it); returns its commit (None once committed).

        In "always" and "off" the write is committed here, and a failure raises KvmgrError before the
        store changes. In "batch" the journal keeps, from `before` (the store's data), the values the write
        replaces, to take it back out of the store should its commit fail.
        """
        entries = [(key, None if change is None else (*change, revision)) for key, change in changes.items()]
        if self._committer is None:
            try:
                self._commit(entries, revision)
            except Exception as exc:
                _report(exc, 1)
                raise _failed(exc) from None
            return None
        with self._mutex:
            group = self._open
            group.changes.extend(entries)
            group.undo.extend((key, before(key)) for key in changes)
            group.revision = max(group.revision, revision)
            group.writes += 1
            self._work.notify()
        return group.outcome

    def fail_uncommitted(self, failure: BaseException) -> list[Undo]:
        """Fail every write not yet committed (the committing group and the one queued behind it).

        Returns their undo records, oldest first; the store restores them in reverse order. Call it under
        the store's lock (the committer does, through the `on_failure` handler).
        """
        with self._mutex:
            groups = [group for group in (self._committing, self._open) if group is not None]
            self._committing, self._open = None, CommitGroup()
            undo: list[Undo] = []
            for group in groups:
                undo.extend(group.undo)
                group.changes, group.undo = [], []
        _report(failure, sum(group.writes for group in groups))
        for group in groups:
            group.outcome.fail(_failed(failure))
        return undo

    def pending(self) -> int:
        """How many writes wait for their group commit (batch mode; 0 otherwise)."""
        with self._mutex:
            return self._open.writes + (self._committing.writes if self._committing else 0)

    def close(self) -> None:
        """Commit what is pending, close the database and release the data directory."""
        with self._mutex:
            self._closing = True
            self._work.notify()
        if self._committer is not None:
            self._committer.join(COMMIT_TIMEOUT)
        self._db.close()
        self._lock_file.close()

    def _commit_batches(self) -> None:
        """The committer thread (batch): commit each group of writes, until closed with nothing pending."""
        while True:
            with self._mutex:
                self._work.wait_for(lambda: self._open.writes or self._closing)
                if not self._open.writes:
                    return
                group = self._committing = self._open
                self._open = CommitGroup()
            try:
                self._commit(group.changes, group.revision)
            except Exception as exc:  # whatever the cause, the writers must hear of it and the store go back
                self._on_failure(exc)
                continue
            with self._mutex:
                group.changes, group.undo = [], []
                self._committing = None
            group.outcome.resolve(None)

    def _commit(self, changes: Iterable[tuple[str, Entry | None]], revision: int) -> None:
        """Write changes and the revision in one transaction; on any failure roll it back, so the next one starts clean."""
        final = dict(changes)  # only each key's last change matters
        db = self._db
        try:
            if db.in_transaction:  # a rollback after an earlier failure failed too: try it again first
                db.execute("ROLLBACK")
            db.execute("BEGIN")
            db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key, value in final.items() if value is None])
            db.executemany("INSERT OR REPLACE INTO kv (key, value, encoded, expires, version) VALUES (?, ?, ?, ?, ?)",
                           [_row(key, entry) for key, entry in final.items() if entry is not None])
            db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?)", (revision,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a database written before values were more than str and bytes, and before expiry, up to date."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(kv)")}
    if "encoded" not in columns:
        db.execute("ALTER TABLE kv ADD COLUMN encoded INTEGER NOT NULL DEFAULT 0")
    if "expires" not in columns:
        db.execute("ALTER TABLE kv ADD COLUMN expires REAL")
    if "version" not in columns:
        db.execute("ALTER TABLE kv ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID")


def _row(key: str, entry: Entry) -> tuple[str, Value, int, float | None, int]:
    """A row: a str or bytes value as SQLite text or blob, anything else in its byte form (values.encode) flagged encoded."""
    value, expires, version = entry
    if type(value) is str or type(value) is bytes:
        return key, value, 0, expires, version
    return key, encode(value), 1, expires, version


def _stored_value(key: str, value: Value, encoded: int) -> Value:
    """A row's value as it was stored; ConfigError if an encoded one does not decode."""
    if not encoded:
        return value
    try:
        return decode(value)  # type: ignore[arg-type]
    except ValueRuleError as exc:
        raise ConfigError(f"the value of key {key!r} cannot be read ({exc}): was the database changed by another tool?") from None


def _describe(failure: BaseException) -> str:
    return str(failure) or type(failure).__name__


def _failed(failure: BaseException) -> KvmgrError:
    """The one-line error a writer of a failed commit gets."""
    return KvmgrError(f"durable storage failed: {_describe(failure)}: the write was not made")


def _report(failure: BaseException, writes: int) -> None:
    """Log one line for a failed commit."""
    what = "1 write" if writes == 1 else f"{writes} writes"
    log.warning("commit to durable storage failed: %s: %s not made, the store is back at its last commit", _describe(failure), what)


def _shorten(raw: bytes | None, limit: int = 40) -> str:
    """A key's bytes for a message: decoded where possible, cut to `limit` characters."""
    text = repr((raw or b"").decode("utf-8", "backslashreplace"))
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _lock_directory(data_dir: Path) -> TextIO:
    """Hold an exclusive lock on the data directory for as long as the server runs."""
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a directory")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(data_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the server's lifetime
    except OSError as exc:
        raise ConfigError(f"cannot use data directory {data_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"data directory {data_dir} is in use by another kvmgr server") from None
    with contextlib.suppress(OSError):
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle
