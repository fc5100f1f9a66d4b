"""Durable mode: the store's data in SQLite (WAL) inside a data directory, written before writes are acknowledged.

Every change goes through one path: `append(changes)` under the store's lock (so the journal's order is
the store's order), then `wait(ticket)` outside it; a write is acknowledged when `wait` returns.
- fsync "always": each write is committed and fsynced inside `append`.
- fsync "batch": a committer thread commits everything appended since its last commit in one
  transaction (group commit); `wait` returns once the commit holding that write is durable.
- fsync "off": each write is committed inside `append`; the operating system decides when it reaches disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path

from kvmgr.errors import ConfigError, KvmgrError
from kvmgr.validation import Value

FSYNC_MODES = ("always", "batch", "off")
DATABASE_NAME = "kvmgr.sqlite3"
LOCK_NAME = "kvmgr.lock"
COMMIT_TIMEOUT = 30.0  # seconds a writer waits for its commit before it is told durable storage failed
Changes = Mapping[str, Value | None]  # None deletes the key


class SQLiteJournal:
    """The durable copy of a Store, one SQLite database in a data directory held by one server at a time."""

    def __init__(self, data_dir: Path, fsync: str = "always") -> None:
        if fsync not in FSYNC_MODES:
            raise ConfigError(f"--fsync must be one of {', '.join(FSYNC_MODES)} (got {fsync!r})")
        self.fsync = fsync
        self._lock_file = _lock_directory(data_dir)
        try:
            self._db = sqlite3.connect(data_dir / DATABASE_NAME, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'OFF' if fsync == 'off' else 'FULL'}")
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID")
        except sqlite3.Error as exc:
            self._lock_file.close()
            raise ConfigError(f"cannot use {data_dir / DATABASE_NAME}: {exc}") from None
        self._pending: list[tuple[str, Value | None]] = []
        self._appended = 0
        self._committed = 0
        self._failure: BaseException | None = None
        self._closing = False
        self._changed = threading.Condition()
        self._committer: threading.Thread | None = None
        if fsync == "batch":
            self._committer = threading.Thread(target=self._commit_batches, name="kvmgr-group-commit", daemon=True)
            self._committer.start()

    def load(self) -> dict[str, Value]:
        """Everything stored, as the dict the server starts from (str stays str, bytes stays bytes)."""
        try:
            return dict(self._db.execute("SELECT key, value FROM kv"))
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read the data in {DATABASE_NAME}: {exc}") from None

    def append(self, changes: Changes) -> int:
        """Take a write (call it under the store's lock); returns the ticket to wait on."""
        if self.fsync != "batch":
            self._apply(list(changes.items()))
            return 0
        with self._changed:
            if self._failure is not None:
                raise KvmgrError(f"durable storage failed: {self._failure}")
            self._pending.extend(changes.items())
            self._appended += 1
            self._changed.notify_all()
            return self._appended

    def wait(self, ticket: int) -> None:
        """Return once the write with this ticket is committed."""
        if ticket == 0:
            return
        with self._changed:
            done = self._changed.wait_for(lambda: self._committed >= ticket or self._failure is not None, COMMIT_TIMEOUT)
            if self._committed < ticket:
                reason = self._failure if done else f"no commit within {COMMIT_TIMEOUT:g}s"
                raise KvmgrError(f"durable storage failed: {reason}")

    def close(self) -> None:
        """Commit what is pending, close the database and release the data directory."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        if self._committer is not None:
            self._committer.join(COMMIT_TIMEOUT)
        self._db.close()
        self._lock_file.close()

    def _commit_batches(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
                batch, self._pending = self._pending, []
                ticket = self._appended
            try:
                self._apply(batch)
            except BaseException as exc:  # a dead committer must wake every waiter, whatever killed it
                with self._changed:
                    self._failure = exc
                    self._changed.notify_all()
                return
            with self._changed:
                self._committed = ticket
                self._changed.notify_all()

    def _apply(self, changes: list[tuple[str, Value | None]]) -> None:
        final = dict(changes)  # only each key's last change of the batch matters
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key, value in final.items() if value is None])
            db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", [kv for kv in final.items() if kv[1] is not None])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def _lock_directory(data_dir: Path):
    """Hold an exclusive lock on the data directory for as long as the server runs."""
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
