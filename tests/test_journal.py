"""The journal's failure path in one process: a Store on a SQLiteJournal whose commit fails (an injected sqlite3.Error)."""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmgr.errors import KeyNotFound, KvmgrError
from kvmgr.protocol.values import Value
from kvmgr.server import durable
from kvmgr.server import store as store_module
from kvmgr.server.deferred import settle
from kvmgr.server.durable import FSYNC_MODES, SQLiteJournal
from kvmgr.server.journal import Before, Undo
from kvmgr.server.store import Store
from tests.commit_failure import COMMITTED, Call, Same, fail_a_commit_in_flight, until

INJECTED = "disk I/O error (injected)"


class FailingDatabase:
    """The journal's sqlite3 connection, passed through, except that once armed each of `statements` (COMMIT,
    say) waits until released and then raises sqlite3.OperationalError, the first time it runs; then the cause is gone."""

    def __init__(self, db: sqlite3.Connection, statements: tuple[str, ...] = ("COMMIT",)) -> None:
        self._db = db
        self._failing = list(statements)
        self.armed = False
        self.reached = threading.Event()
        self.release = threading.Event()

    def execute(self, sql: str, *args: Any) -> Any:
        self._maybe_fail(sql)
        return self._db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._maybe_fail(sql)
        return self._db.executemany(sql, *args)

    def _maybe_fail(self, sql: str) -> None:
        statement = sql.split(" ", 1)[0]
        if self.armed and statement in self._failing:
            self._failing.remove(statement)
            self.armed = bool(self._failing)
            self.reached.set()
            assert self.release.wait(10), "the test never released the commit"
            raise sqlite3.OperationalError(INJECTED)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def open_store(data_dir: Path, fsync: str) -> Store:
    return Store(journal=SQLiteJournal(data_dir, fsync))


@pytest.fixture
def opened() -> Iterator[list[Store]]:
    """Stores a test opens, closed at its end."""
    stores: list[Store] = []
    yield stores
    for store in stores:
        store.close()


def failing(store: Store, monkeypatch: pytest.MonkeyPatch, *statements: str) -> FailingDatabase:
    """Put a FailingDatabase between the store's journal and its database."""
    database = FailingDatabase(store._journal._db, statements or ("COMMIT",))
    monkeypatch.setattr(store._journal, "_db", database)
    return database


def waiting_in_store(thread: threading.Thread, database: FailingDatabase) -> bool:
    """True if the thread waits inside the Store (for its lock) or in the held commit."""
    frame = sys._current_frames().get(thread.ident)
    innermost = frame
    while frame is not None:
        if frame.f_code is FailingDatabase._maybe_fail.__code__:
            return database.reached.is_set()
        frame = frame.f_back
    return innermost is not None and innermost.f_code.co_filename == store_module.__file__


def durable_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kvmgr.server.durable" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("fsync", FSYNC_MODES)
def test_a_failed_commit_fails_the_writes_in_flight_rolls_back_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, opened: list[Store], fsync: str,
) -> None:
    store = open_store(tmp_path, fsync)
    opened.append(store)
    store.store("k", COMMITTED)
    database = failing(store, monkeypatch)

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        database.armed = True
        yield
        database.release.set()

    def blocked(threads: list[threading.Thread]) -> None:
        until(lambda: all(waiting_in_store(thread, database) for thread in threads), "the calls waiting behind the commit")

    with caplog.at_level(logging.WARNING, logger="kvmgr.server.durable"):
        fail_a_commit_in_flight(fsync, store, Same(store), held, blocked)
        assert store.store("after", "the cause is gone") == "saved"
    assert durable_warnings(caplog) == [
        f"commit to durable storage failed: {INJECTED}: {'2 writes' if fsync == 'batch' else '1 write'} not made, "
        "the store is back at its last commit"
    ]
    store.close()
    again = open_store(tmp_path, fsync)
    opened.append(again)
    assert again.get_many(["k", "after"]) == {"k": COMMITTED, "after": "the cause is gone"}


def test_every_write_queued_behind_a_failed_group_is_undone_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Store],
) -> None:
    store = open_store(tmp_path, "batch")
    opened.append(store)
    store.store_many({"k": "0", "gone": "g", "kept": "1"})
    database = failing(store, monkeypatch)
    database.armed = True
    first = Call(store.store, "k", "1")
    until(database.reached.is_set, "the first group's commit")
    queued = [Call(store.store, "k", "2"), Call(store.delete, "gone"), Call(store.store_many, {"k": "3", "new": "n"}),
              Call(store.cas, "kept", "1", "2"), Call(store.delete, "new")]
    until(lambda: store.get("kept") == "2" and not store.exists("new"), "the queued writes being applied")
    database.release.set()
    for call in [first, *queued]:
        assert isinstance(call.join().error, KvmgrError), call.result
    assert store.get_many(["k", "gone", "kept", "new"]) == {"k": "0", "gone": "g", "kept": "1"}
    assert store.size() == 3


@pytest.mark.parametrize("statements", ["BEGIN", "INSERT", "COMMIT", "COMMIT ROLLBACK"])
@pytest.mark.parametrize("fsync", FSYNC_MODES)
def test_the_next_commit_goes_through_whichever_statement_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Store], fsync: str, statements: str,
) -> None:
    store = open_store(tmp_path, fsync)
    opened.append(store)
    database = failing(store, monkeypatch, *statements.split())
    database.armed = True
    database.release.set()
    with pytest.raises(KvmgrError, match=f"^{re.escape(f'durable storage failed: {INJECTED}: the write was not made')}$"):
        store.store("lost", "v")
    with pytest.raises(KeyNotFound):
        store.get("lost")
    assert store.store("kept", "v") == "saved"
    assert not store._journal._db.in_transaction


def test_an_empty_store_many_never_waits_for_a_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Store]) -> None:
    monkeypatch.setattr(durable, "COMMIT_TIMEOUT", 2.0)  # what an empty write used to wait for (30 s by default)
    store = open_store(tmp_path, "batch")
    opened.append(store)
    started = time.monotonic()
    assert store.store_many({}) == {}
    assert time.monotonic() - started < 1.5  # well short of the 2 s it used to wait
    assert store.store("k", "v") == "saved"


def test_a_store_closed_while_a_commit_fails_rolls_back_without_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[Store],
) -> None:
    store = open_store(tmp_path, "batch")
    opened.append(store)
    store.store("k", COMMITTED)
    database = failing(store, monkeypatch)
    database.armed = True
    write = Call(store.store, "k", "doomed")
    until(database.reached.is_set, "the commit")
    closing = Call(store.close)
    until(lambda: store._closed, "the store refusing writes")
    database.release.set()
    assert closing.join().error is None
    assert isinstance(write.join().error, KvmgrError)
    assert store._data == {"k": COMMITTED}


def entries(data: dict[str, Value]) -> Before:
    """The journal's view of a store holding data, none of it expiring."""
    return lambda key: None if key not in data else (data[key], None, 0)


def test_the_journal_alone_keeps_what_each_write_replaced_and_fails_every_uncommitted_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = SQLiteJournal(tmp_path, "batch")
    try:
        database = FailingDatabase(journal._db)
        monkeypatch.setattr(journal, "_db", database)
        handed_back: list[list[Undo]] = []
        journal.on_failure(lambda failure: handed_back.append(journal.fail_uncommitted(failure)))
        database.armed = True
        first = journal.append({"k": ("1", None)}, entries({"k": "0"}), 1)
        until(database.reached.is_set, "the first group's commit")
        second = journal.append({"k": ("2", None), "new": ("n", None)}, entries({"k": "1"}), 2)  # queued behind the failing group
        third = journal.append({"gone": None}, entries({"gone": "g", "other": "o"}), 3)
        database.release.set()
        for commit in (first, second, third):
            with pytest.raises(KvmgrError, match=f"^{re.escape(f'durable storage failed: {INJECTED}: the write was not made')}$"):
                settle(commit)
        until(lambda: bool(handed_back), "the failure handler's undo records")  # the waiters may wake before it returns
        assert handed_back == [[("k", ("0", None, 0)), ("k", ("1", None, 0)), ("new", None), ("gone", ("g", None, 0))]]
        settle(journal.append({"after": ("a", None)}, entries({}), 4))  # the cause is gone: the next commit goes through
    finally:
        journal.close()
    again = SQLiteJournal(tmp_path)
    assert again.load() == ({"after": ("a", None, 4)}, 4)
    again.close()
