"""The Store by itself, in this process: its answers, the plain types it keeps, what it refuses, and its journal seam."""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

import pytest

from kvmgr.config import Limits
from kvmgr.errors import InvalidKey, InvalidValue, KeyNotFound, KvmgrError
from kvmgr.protocol import wire
from kvmgr.protocol.validation import Value
from kvmgr.server.journal import Before, Changes, Commit, Entry, Journal, RollBack, Undo
from kvmgr.server.store import QUIT_MESSAGE, Store


class Mode(enum.StrEnum):
    FAST = "fast"


class Payload(bytes):
    """A bytes subclass."""


@pytest.fixture
def store() -> Store:
    return Store()


def test_each_operation_answers_as_documented(store: Store) -> None:
    assert store.store("a", "1") == "saved" and store.store("a", b"2") == "updated"
    assert store.get("a") == b"2" and store.exists("a") and not store.exists("b")
    with pytest.raises(KeyNotFound):
        store.get("b")
    assert store.cas("b", None, "x") and not store.cas("b", None, "y") and not store.cas("b", b"x", "y") and store.cas("b", "x", "y")
    assert store.store_many({"a": "3", "c": "4"}) == {"a": "updated", "c": "saved"}
    assert store.get_many(["a", "c", "missing"]) == {"a": "3", "c": "4"}
    assert store.keys() == ["a", "b", "c"] and store.size() == 3
    assert store.delete("a") and not store.delete("a") and store.size() == 2
    assert store.store_many({}) == {}


def test_subclasses_are_kept_as_plain_str_and_bytes_so_a_reply_can_carry_them(store: Store) -> None:
    store.store(Mode.FAST, Payload(b"\x00"))
    store.store_many({"m": Mode.FAST})
    store.cas("c", None, Payload(b"p"))
    data = store.get_many(["fast", "m", "c"])
    assert data == {"fast": b"\x00", "m": "fast", "c": b"p"}
    keys = store.keys()
    assert [type(key) for key in keys] == [str, str, str]
    assert [type(value) for value in data.values()] == [bytes, str, bytes]
    assert wire.load_reply(wire.dump((wire.RETURN, data))) == (wire.RETURN, data)  # the client's unpickler takes no classes


@pytest.mark.parametrize(("call", "refused"), [
    pytest.param(lambda s: s.store("k\udcff", "v"), InvalidKey, id="lone surrogate key"),
    pytest.param(lambda s: s.store("k", "v\ud800"), InvalidValue, id="lone surrogate value"),
    pytest.param(lambda s: s.get("\udcff"), InvalidKey, id="get lone surrogate"),
    pytest.param(lambda s: s.store("k", memoryview(b"v")), InvalidValue, id="memoryview"),
    pytest.param(lambda s: s.store("k", bytearray(b"v")), InvalidValue, id="bytearray"),
    pytest.param(lambda s: s.store("k", None), InvalidValue, id="None value"),
    pytest.param(lambda s: s.store("k", {1, 2}), InvalidValue, id="set value"),
    pytest.param(lambda s: s.store("k", float("nan")), InvalidValue, id="nan value"),
    pytest.param(lambda s: s.store("k", {1: "v"}), InvalidValue, id="dict with an int key"),
    pytest.param(lambda s: s.store("", "v"), InvalidKey, id="empty key"),
    pytest.param(lambda s: s.store(b"k", "v"), InvalidKey, id="bytes key"),
    pytest.param(lambda s: s.cas("k", object(), "v"), InvalidValue, id="cas object expected"),
    pytest.param(lambda s: s.store_many([("k", "v")]), InvalidValue, id="store_many pairs"),
    pytest.param(lambda s: s.store_many({"k": "v", "bad\udcff": "v"}), InvalidKey, id="store_many bad key"),
    pytest.param(lambda s: s.get_many("k"), InvalidKey, id="get_many str"),
    pytest.param(lambda s: s.rendezvous("r", True), InvalidValue, id="rendezvous True"),
    pytest.param(lambda s: s.rendezvous("r", 1, float("nan")), InvalidValue, id="rendezvous nan timeout"),
    pytest.param(lambda s: s.keys(None, 0), InvalidValue, id="keys limit 0"),
])
def test_what_no_backend_accepts_is_refused_and_nothing_changes(
    store: Store, call: Callable[[Store], object], refused: type[Exception],
) -> None:
    with pytest.raises(refused):
        call(store)
    assert store.size() == 0


def test_sizes_are_counted_in_utf8_bytes() -> None:
    store = Store(Limits(max_key_bytes=4, max_value_bytes=6))
    assert store.store("éé", "ééé") == "saved"
    with pytest.raises(InvalidKey, match="longer than 4 bytes"):
        store.store("ééa", "v")
    with pytest.raises(InvalidValue, match="larger than 6 bytes"):
        store.store("k", "éééa")
    with pytest.raises(InvalidValue, match="larger than 6 bytes"):
        store.store("k", b"1234567")


def test_rendezvous_releases_its_parties_together(store: Store) -> None:
    arrived: list[int] = []
    others = [threading.Thread(target=lambda: arrived.append(store.rendezvous(Mode.FAST, 3, 10))) for _ in range(2)]
    for thread in others:
        thread.start()
    arrived.append(store.rendezvous("fast", 3, 10))
    for thread in others:
        thread.join(10)
    assert sorted(arrived) == [0, 1, 2]
    with pytest.raises(KvmgrError, match="not all 2 parties arrived"):
        store.rendezvous("alone", 2, 0.01)


def test_a_closed_store_refuses_writes_and_still_answers_reads(store: Store) -> None:
    store.store("k", "v")
    store.close()
    with pytest.raises(KvmgrError, match="shutting down: the write was not made"):
        store.store("k", "w")
    assert store.get("k") == "v"
    store.close()  # closing twice is harmless


def test_quit_calls_back_and_confirms() -> None:
    quits: list[bool] = []
    assert Store(on_quit=lambda: quits.append(True)).quit() == QUIT_MESSAGE and quits == [True]


class RecordingJournal:
    """A Journal that starts from given data, keeps every write with the values it replaced, and can refuse writes."""

    def __init__(self, start: dict[str, Value]) -> None:
        self.start = start
        self.writes: list[tuple[dict[str, Entry | None], list[Undo]]] = []
        self.refusing = False
        self.closed = 0
        self.roll_back: RollBack = lambda failure: None

    def load(self) -> tuple[dict[str, Entry], int]:
        return {key: (value, None, 0) for key, value in self.start.items()}, 0

    def on_failure(self, handler: RollBack) -> None:
        self.roll_back = handler

    def append(self, changes: Changes, before: Before, revision: int) -> Commit:
        if self.refusing:
            raise KvmgrError("the journal refused the write")
        self.writes.append((dict(changes), revision, [(key, before(key)) for key in changes]))
        return None

    def fail_uncommitted(self, failure: BaseException) -> list[Undo]:
        undo = [record for *_, records in self.writes for record in records]
        self.writes.clear()
        return undo

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        self.closed += 1


def journaled(start: dict[str, Value]) -> tuple[Store, RecordingJournal]:
    journal = RecordingJournal(start)
    checked: Journal = journal  # the test's journal is a Journal (mypy checks this line)
    return Store(journal=checked), journal


def test_the_store_starts_from_its_journal_and_hands_it_every_change_in_order_with_what_it_replaced() -> None:
    store, journal = journaled({"a": "0"})
    assert store.get("a") == "0"
    store.store("a", "1")
    store.store_many({"b": b"2", "a": "3"})
    assert not store.cas("b", "wrong", "x") and store.cas("b", b"2", "4")
    assert store.delete("a") and not store.delete("a")
    assert store.store_many({}) == {}
    assert journal.writes == [  # each write is the next revision: every key it changes gets that version
        ({"a": ("1", None)}, 1, [("a", ("0", None, 0))]),
        ({"b": (b"2", None), "a": ("3", None)}, 2, [("b", None), ("a", ("1", None, 1))]),
        ({"b": ("4", None)}, 3, [("b", (b"2", None, 2))]),
        ({"a": None}, 4, [("a", ("3", None, 2))]),
    ]
    store.close()
    store.close()
    assert journal.closed == 1


@pytest.mark.parametrize("write", [
    pytest.param(lambda s: s.store("a", "new"), id="store"),
    pytest.param(lambda s: s.delete("a"), id="delete"),
    pytest.param(lambda s: s.cas("a", "0", "new"), id="cas"),
    pytest.param(lambda s: s.store_many({"a": "new", "b": "new"}), id="store_many"),
])
def test_a_write_the_journal_refuses_changes_nothing(write: Callable[[Store], object]) -> None:
    store, journal = journaled({"a": "0"})
    journal.refusing = True
    with pytest.raises(KvmgrError, match="the journal refused the write"):
        write(store)
    assert store.get_many(["a", "b"]) == {"a": "0"}


def test_a_failed_commit_takes_every_uncommitted_write_back_newest_first() -> None:
    store, journal = journaled({"a": "0", "gone": "g"})
    store.store("a", "1")
    store.store_many({"new": "n", "a": "2"})
    store.delete("gone")
    store.delete("new")
    assert store.cas("a", "2", "3")
    journal.roll_back(OSError("disk full"))
    assert store.get_many(["a", "gone", "new"]) == {"a": "0", "gone": "g"} and store.size() == 2


def test_stores_on_the_default_journal_share_nothing() -> None:
    first, second = Store(), Store()
    first.store("k", "v")
    assert not second.exists("k") and second.size() == 0
    first.close()
    assert second.store("k", "w") == "saved"  # closing one store does not close the other
