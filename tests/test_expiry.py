"""Expiry on kvmgr's own server: the Store's deadlines and bounded sweep, the loop's background sweep, and durable mode
keeping values with their types and absolute expiry times across a restart. (Both backends' expiry semantics: test_values.py.)"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import kvmgr
from kvmgr.config import format_address
from kvmgr.errors import KeyNotFound
from kvmgr.server.manager import StoreServer
from kvmgr.server.store import Store
from kvmgr.tools.processes import ProcessGroup
from tests.test_store import journaled

VALUES: dict[str, object] = {
    "int": -(2**70), "float": -0.0, "bool": True, "tuple": (1, ("a", b"\x00")), "list": [1.5, None is None],
    "dict": {"$looks": "like a tag", "n": {"deep": [()]}}, "text": "plain", "blob": b"\xff",
}


def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll condition until it holds; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_a_sweep_reclaims_at_most_its_budget_and_size_is_exact_at_once() -> None:
    store = Store()
    store.store_many({f"k{i}": i for i in range(5000)})
    for i in range(5000):
        store.expire(f"k{i}", 0.001)
    store.store("stays", "v")
    until(lambda: not store.exists("k0"), "the first key to expire")
    time.sleep(0.002)  # every deadline (1 ms, rounded up) has passed
    reclaimed = store.sweep(budget=2000)  # bounded work per tick: 2,000 deadlines looked at
    assert reclaimed in (1999, 2000)  # (k0's deadline, if it was among them, was stale: k0 went when exists() looked)
    assert store.expiring() == 4999 - reclaimed
    assert store.size() == 1 and store.keys() == ["stays"]  # exact, whatever the sweep has not reached yet
    assert store.expiring() == 0


def test_a_changed_or_removed_expiry_leaves_no_stale_deadline_behind() -> None:
    store = Store()
    store.store("k", "v", ttl=0.01)
    assert store.persist("k") and store.ttl("k") is None
    store.store("j", "v", ttl=0.01)
    store.store("j", "w")  # a plain store clears the ttl
    time.sleep(0.02)
    assert store.sweep() == 0 and store.get_many(["k", "j"]) == {"k": "v", "j": "w"}


def test_incr_keeps_the_expiry_and_a_failed_commit_restores_it() -> None:
    store, journal = journaled({})
    store.store("n", 1, ttl=60)
    assert store.incr("n", 2) == 3 and 59 < (store.ttl("n") or 0) <= 60
    store.persist("n")
    journal.roll_back(OSError("disk full"))  # takes back every write since the start: the persist, the incr, the store
    with pytest.raises(KeyNotFound):
        store.ttl("n")


def test_the_server_reclaims_expired_keys_without_any_call(thread_server: StoreServer) -> None:
    with kvmgr.connect(format_address(thread_server.address), authkey=bytes(thread_server.authkey)) as client:
        client.pipeline([("store", f"k{i}", i, 0.3) for i in range(3000)])
        assert thread_server.store.expiring() > 0
        until(lambda: thread_server.store.expiring() == 0, "the background sweep")
        assert client.size() == 0


def test_durable_mode_keeps_every_value_type_and_absolute_expiry_across_a_restart(group: ProcessGroup, tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path), "--fsync", "batch"]
    server = group.start_server(extra_args=args)
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        client.store_many(VALUES)
        client.store("short", "gone after the restart", ttl=0.2)
        client.store("long", 7, ttl=300)
        client.incr("int", 1)
        client.quit()
    assert server.process.wait(timeout=5) == 0
    time.sleep(0.25)  # "short" expires while no server runs: its absolute deadline passes
    again = group.start_server(extra_args=args)
    with kvmgr.connect(again.address_text, authkey=again.authkey.encode()) as client:
        stored = client.get_many([*VALUES, "short", "long"])
        expected = {**VALUES, "int": -(2**70) + 1, "long": 7}
        assert stored == expected and all(type(stored[key]) is type(value) for key, value in expected.items())
        assert repr(stored["float"]) == "-0.0" and stored["tuple"] == (1, ("a", b"\x00"))
        assert 290 < (client.ttl("long") or 0) <= 300 and client.ttl("text") is None
        client.quit()
    with sqlite3.connect(tmp_path / "kvmgr.sqlite3") as db:  # the expired row was forgotten when the journal loaded
        assert db.execute("SELECT count(*) FROM kv WHERE key = 'short'").fetchone() == (0,)
