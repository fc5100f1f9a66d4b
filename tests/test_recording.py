"""History recording is a wrapper around any client: the same entries on every transport, and no cost without it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kvmgr
from kvmgr.client import Client, Operations
from kvmgr.client.recording import RecordingClient
from kvmgr.config import format_address
from kvmgr.errors import InvalidKey, KeyNotFound, OutcomeUnknown, WrongType
from kvmgr.protocol.values import same_value
from kvmgr.verify.check import check_operations
from kvmgr.verify.history import HistoryWriter, Operation, read_history

from . import test_retry
from .test_retry import MARK, CuttingRelay, warmed

relayed = test_retry.relayed  # the fixture: a relay that cuts calls, in front of a server of each backend
Relayed = tuple[CuttingRelay, Callable[..., Any]]


def every_kind_of_call(client: Operations) -> None:
    """Calls of every operation, with answers of every kind: found, absent, refused, batches, a pipeline."""
    client.store("k", "v1")
    client.get("k")
    with pytest.raises(KeyNotFound):
        client.get("missing")
    with pytest.raises(InvalidKey):
        client.store("", "x")  # refused before anything was sent: not an operation to record
    client.cas("k", "v1", b"\x01")
    client.cas("k", "nope", "x")
    client.exists("k"), client.size(), client.keys()  # not register operations: not recorded
    client.store_many({"a": "1", "b": "2"})
    client.get_many(["a", "zz"])
    client.pipeline([("store", "p", "1"), ("get", "p"), ("get", "nothing"), ("delete", "p"), ("size",)], raise_on_error=False)
    client.delete("k")


EXPECTED = [  # (op, key, value, expected, result, status)
    ("store", "k", "v1", None, "saved", "ok"),
    ("get", "k", None, None, "v1", "ok"),
    ("get", "missing", None, None, None, "ok"),
    ("cas", "k", b"\x01", "v1", True, "ok"),
    ("cas", "k", "x", "nope", False, "ok"),
    ("store", "a", "1", None, "saved", "ok"),
    ("store", "b", "2", None, "saved", "ok"),
    ("get", "a", None, None, "1", "ok"),
    ("get", "zz", None, None, None, "ok"),
    ("store", "p", "1", None, "saved", "ok"),
    ("get", "p", None, None, "1", "ok"),
    ("get", "nothing", None, None, None, "ok"),
    ("delete", "p", None, None, True, "ok"),
    ("delete", "k", None, None, True, "ok"),
]


def recorded(inner: Operations, path: Path, calls: Callable[[Operations], None]) -> list[Operation]:
    """Run calls on inner wrapped in a RecordingClient named alice; the history they left."""
    with HistoryWriter(path) as history, RecordingClient(inner, history, name="alice") as client:
        calls(client)
    return read_history(path)


def summary(operations: list[Operation]) -> list[tuple]:
    """What each entry says, without its times."""
    return [(op.op, op.key, op.value, op.expected, op.result, op.status) for op in operations]


def test_one_wrapper_records_the_same_entries_around_either_transport(thread_server: Any, redis_url: str, tmp_path: Path) -> None:
    from kvmgr.client.redis_transport import connect_redis

    manager = kvmgr.connect(format_address(thread_server.address), authkey=bytes(thread_server.authkey), timeout=5.0)
    redis = connect_redis(redis_url, timeout=5.0)
    redis.flush()
    histories = {kind: recorded(inner, tmp_path / f"{kind}.jsonl", every_kind_of_call) for kind, inner in
                 [("manager", manager), ("redis", redis)]}
    for operations in histories.values():
        assert summary(operations) == EXPECTED
        assert all(op.client == "alice" and op.end is not None and op.end >= op.start for op in operations)
        assert (operations[5].start, operations[5].end) == (operations[6].start, operations[6].end)  # one store_many
        assert (operations[7].start, operations[7].end) == (operations[8].start, operations[8].end)  # one get_many


def test_a_client_without_a_history_is_the_bare_transport(thread_server: Any, tmp_path: Path) -> None:
    address, authkey = format_address(thread_server.address), bytes(thread_server.authkey)
    with kvmgr.connect(address, authkey=authkey) as bare:
        assert type(bare) is Client and not hasattr(bare, "history")
    with HistoryWriter(tmp_path / "h.jsonl") as history, kvmgr.connect(address, authkey=authkey, history=history) as wrapped:
        assert isinstance(wrapped, RecordingClient) and type(wrapped.inner) is Client and wrapped.history is history


@pytest.mark.parametrize("backend", ["manager", "redis"])
def test_an_unrecorded_client_works_without_the_history_module(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "manager":
        server = request.getfixturevalue("thread_server")
        target, authkey = format_address(server.address), bytes(server.authkey)
    else:
        target, authkey = request.getfixturevalue("redis_url"), None
    code = f"""
        import sys
        sys.modules["kvmgr.verify.history"] = None  # importing either now raises ImportError
        sys.modules["kvmgr.client.recording"] = None
        import kvmgr
        with kvmgr.connect({target!r}, authkey={authkey!r}, timeout=5.0) as client:
            assert client.store("unrecorded", "v") in ("saved", "updated")
            assert client.get("unrecorded") == "v"
            assert client.pipeline([("get", "unrecorded"), ("exists", "unrecorded")]) == ["v", True]
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_a_repeated_call_is_recorded_once_per_attempt(relayed: Relayed, tmp_path: Path) -> None:
    relay, connect = relayed

    def cut_store(client: Operations) -> None:
        warmed(client)
        relay.cut()
        assert client.store(MARK, "v") == "updated"

    operations = recorded(connect(), tmp_path / "h.jsonl", cut_store)
    assert summary(operations)[2:] == [("store", MARK, "v", None, None, "info"), ("store", MARK, "v", None, "updated", "ok")]
    assert operations[2].end is None and operations[3].start >= operations[2].start


def test_calls_of_a_pipeline_whose_connection_is_cut_are_recorded_as_unknown(relayed: Relayed, tmp_path: Path) -> None:
    relay, connect = relayed
    inner = connect()

    def cut_pipeline(client: Operations) -> None:
        warmed(client)
        relay.cut()
        calls = [("store", MARK, "1"), ("store", "x", "2"), ("get", "x")]
        if isinstance(inner, Client):  # all three in flight at once: none answered
            with pytest.raises(OutcomeUnknown, match="calls 0 to 2 may or may not have taken effect"):
                client.pipeline(calls)
        else:  # one by one: the cut one is repeated, like any call
            assert client.pipeline(calls) == ["updated", "saved", "2"]

    entries = summary(recorded(inner, tmp_path / "h.jsonl", cut_pipeline))[2:]
    if isinstance(inner, Client):
        assert entries == [("store", MARK, "1", None, None, "info"), ("store", "x", "2", None, None, "info"),
                           ("get", "x", None, None, None, "info")]
    else:
        assert entries == [("store", MARK, "1", None, None, "info"), ("store", MARK, "1", None, "updated", "ok"),
                           ("store", "x", "2", None, "saved", "ok"), ("get", "x", None, None, "2", "ok")]


def new_operations(client: Operations) -> None:
    """incr/decr/add/pop/expire/persist and stores with a ttl, with answers of every kind, and values of every type."""
    client.incr("n")
    client.incr("n", 2.5)
    client.decr("n", 1)
    client.store("s", "text")
    with pytest.raises(WrongType):
        client.incr("s")
    assert client.add("a", (1, [True, 1.0], {"x": b"\x01"})) is True
    assert client.add("a", 1) is False
    assert client.pop("a") == (1, [True, 1.0], {"x": b"\x01"})
    assert client.pop("a", "fallback") == "fallback"
    client.store("t", 1, ttl=60)
    client.add("u", True, ttl=30)
    assert client.expire("t", 120) is True
    assert client.persist("t") is True
    assert client.persist("missing") is False


NEW_EXPECTED = [  # (op, key, value, expected, result, status, ttl)
    ("incr", "n", 1, None, 1, "ok", None),
    ("incr", "n", 2.5, None, 3.5, "ok", None),
    ("decr", "n", 1, None, 2.5, "ok", None),
    ("store", "s", "text", None, "saved", "ok", None),
    ("incr", "s", 1, None, None, "fail", None),
    ("add", "a", (1, [True, 1.0], {"x": b"\x01"}), None, True, "ok", None),
    ("add", "a", 1, None, False, "ok", None),
    ("pop", "a", None, None, (1, [True, 1.0], {"x": b"\x01"}), "ok", None),
    ("pop", "a", None, None, None, "ok", None),
    ("store", "t", 1, None, "saved", "ok", 60.0),
    ("add", "u", True, None, True, "ok", 30.0),
    ("expire", "t", None, None, True, "ok", 120.0),
    ("persist", "t", None, None, True, "ok", None),
    ("persist", "missing", None, None, False, "ok", None),
]


def test_the_new_operations_are_recorded_on_either_backend(any_client: Operations, tmp_path: Path) -> None:
    """Each new operation's entry, values with their types; keys that use expiry are left out of the check, by name."""
    operations = recorded(any_client, tmp_path / "h.jsonl", new_operations)
    got = [(*entry, op.ttl) for entry, op in zip(summary(operations), operations, strict=True)]
    assert got == NEW_EXPECTED
    for (_, _, value, _, result, _, _), op in zip(NEW_EXPECTED, operations, strict=True):
        assert same_value(op.value, value) and same_value(op.result, result), op  # 1, 1.0 and True kept apart
    result = check_operations(operations, initial="empty")
    assert result.linearizable is True and result.checked_keys == 3
    assert set(result.skipped_keys) == {"missing", "t", "u"}
    assert "a store with a ttl" in result.skipped_keys["t"] and "expiry is outside the model" in result.skipped_keys["t"]
