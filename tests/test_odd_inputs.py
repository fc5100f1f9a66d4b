"""Odd inputs and edge cases: one sequence against both backends, which must answer it identically and as expected.

kvmgr.protocol.validation decides: str, bytes and int subclasses become their plain type, anything UTF-8 cannot
encode is refused, and so are buffers (bytearray, memoryview), sets, None (where a value is expected) and
non-finite floats; numbers and bools are values, but not keys, counts or ttls.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvmgr
from kvmgr.client.operations import Operations
from kvmgr.errors import InvalidKey, InvalidValue, KeyNotFound, WrongType


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Blob(bytes):
    """A bytes subclass, as a library might hand one over."""


class Level(enum.IntEnum):
    HIGH = 3


SURROGATE = "\udcff"  # what Python makes of the byte 0xff in a file name or an argument that is not UTF-8
LONGEST_KEY = "k" * 1024  # the default --max-key-bytes
WIDE_KEY = "é" * 512  # 1024 UTF-8 bytes too


def ok(value: Any) -> tuple:
    return ("ok", shape(value))


def error(kind: type[Exception]) -> tuple:
    return ("error", kind.__name__)


def shape(value: Any) -> Any:
    """The value with the exact type of everything in it, so that "red" and Color.RED differ."""
    if isinstance(value, dict):
        return {shape(key): shape(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, [shape(item) for item in value])
    if isinstance(value, str | bytes) and len(value) > 40:
        return (type(value).__name__, value[:20], len(value))  # short enough to read in a failure message
    return (type(value).__name__, value)


# (what is done, how, the outcome both backends must give)
SEQUENCE: list[tuple[str, Callable[[Operations], Any], tuple]] = [
    ("store a StrEnum key and value", lambda c: c.store(Color.RED, Color.GREEN), ok("saved")),
    ("get it back as a plain str", lambda c: c.get("red"), ok("green")),
    ("get by the StrEnum key", lambda c: c.get(Color.RED), ok("green")),
    ("exists by the StrEnum key", lambda c: c.exists(Color.RED), ok(True)),
    ("store a bytes subclass", lambda c: c.store("blob", Blob(b"\x00\xff")), ok("saved")),
    ("get it back as plain bytes", lambda c: c.get("blob"), ok(b"\x00\xff")),
    ("store a memoryview", lambda c: c.store("view", memoryview(b"x")), error(InvalidValue)),
    ("store a bytearray", lambda c: c.store("array", bytearray(b"x")), error(InvalidValue)),
    ("store a bool", lambda c: c.store("bool", True), ok("saved")),
    ("store an IntEnum", lambda c: c.store("int", Level.HIGH), ok("saved")),
    ("get it back as a plain int", lambda c: c.get("int"), ok(3)),
    ("store a float", lambda c: c.store("float", 1.5), ok("saved")),
    ("store None", lambda c: c.store("none", None), error(InvalidValue)),
    ("store a set", lambda c: c.store("none", {"a"}), error(InvalidValue)),
    ("store a NaN", lambda c: c.store("none", float("nan")), error(InvalidValue)),
    ("store a list of subclasses", lambda c: c.store("list", [Color.RED, Blob(b"x")]), ok("saved")),
    ("get it back plain", lambda c: c.get("list"), ok(["red", b"x"])),
    ("incr by an IntEnum at a StrEnum key", lambda c: c.incr(Color.RED, Level.HIGH), error(WrongType)),
    ("incr a bool", lambda c: c.incr("bool"), error(WrongType)),
    ("incr by a bool", lambda c: c.incr("int", True), error(InvalidValue)),
    ("incr by an IntEnum", lambda c: c.incr("int", Level.HIGH), ok(6)),
    ("decr by a str", lambda c: c.decr("int", "1"), error(InvalidValue)),
    ("store with a bool ttl", lambda c: c.store("int", 1, True), error(InvalidValue)),
    ("store with a zero ttl", lambda c: c.store("int", 1, 0), error(InvalidValue)),
    ("expire with a negative ttl", lambda c: c.expire("int", -1), error(InvalidValue)),
    ("add under a StrEnum key", lambda c: c.add(Color.RED, "other"), ok(False)),
    ("the int is untouched", lambda c: c.get("int"), ok(6)),
    ("the ttl of an absent key", lambda c: c.ttl("none"), error(KeyNotFound)),
    ("pop an absent key with a default", lambda c: c.pop("none", None), ok(None)),
    ("pop with a bytes key", lambda c: c.pop(b"int"), error(InvalidKey)),
    ("a key with a lone surrogate", lambda c: c.store(f"key{SURROGATE}", "v"), error(InvalidKey)),
    ("a value with a lone surrogate", lambda c: c.store("surrogate", f"v{SURROGATE}"), error(InvalidValue)),
    ("a high surrogate alone", lambda c: c.store("surrogate", "\ud800"), error(InvalidValue)),
    ("get a key with a lone surrogate", lambda c: c.get(SURROGATE), error(InvalidKey)),
    ("the refused writes left nothing", lambda c: c.exists("surrogate"), ok(False)),
    ("an empty key", lambda c: c.store("", "v"), error(InvalidKey)),
    ("a bytes key", lambda c: c.store(b"key", "v"), error(InvalidKey)),
    ("an int key", lambda c: c.get(5), error(InvalidKey)),
    ("a None key", lambda c: c.exists(None), error(InvalidKey)),
    ("an empty str value", lambda c: c.store("empty-str", ""), ok("saved")),
    ("reads back as an empty str", lambda c: c.get("empty-str"), ok("")),
    ("an empty bytes value", lambda c: c.store("empty-bytes", b""), ok("saved")),
    ("reads back as empty bytes", lambda c: c.get("empty-bytes"), ok(b"")),
    ("the longest key", lambda c: c.store(LONGEST_KEY, "v"), ok("saved")),
    ("one byte longer", lambda c: c.store(LONGEST_KEY + "k", "v"), error(InvalidKey)),
    ("the longest key in 2-byte characters", lambda c: c.store(WIDE_KEY, "v"), ok("saved")),
    ("one byte longer in 2-byte characters", lambda c: c.store(WIDE_KEY + "k", "v"), error(InvalidKey)),
    ("unicode keys and values", lambda c: c.store("ключ", "значение 🔑"), ok("saved")),
    ("read back", lambda c: c.get("ключ"), ok("значение 🔑")),
    ("an emoji key", lambda c: c.store("🔑", b"\x00"), ok("saved")),
    ("rendezvous for True parties", lambda c: c.rendezvous("odd", True), error(InvalidValue)),
    ("rendezvous for 0 parties", lambda c: c.rendezvous("odd", 0), error(InvalidValue)),
    ("rendezvous for 1.0 parties", lambda c: c.rendezvous("odd", 1.0), error(InvalidValue)),
    ("rendezvous with a bytes name", lambda c: c.rendezvous(b"odd", 1), error(InvalidValue)),
    ("rendezvous for one party, a StrEnum name", lambda c: c.rendezvous(Color.RED, 1), ok(0)),
    ("get_many with a str for a list", lambda c: c.get_many("red"), error(InvalidKey)),
    ("get_many with an int in the list", lambda c: c.get_many(["red", 5]), error(InvalidKey)),
    ("get_many with a lone surrogate", lambda c: c.get_many([SURROGATE]), error(InvalidKey)),
    ("get_many with a StrEnum key", lambda c: c.get_many([Color.RED, "ключ", "missing"]), ok({"red": "green", "ключ": "значение 🔑"})),
    ("store_many with a list of pairs", lambda c: c.store_many([("a", "1")]), error(InvalidValue)),
    ("store_many with a str", lambda c: c.store_many("ab"), error(InvalidValue)),
    ("store_many with a memoryview value", lambda c: c.store_many({"a": memoryview(b"1")}), error(InvalidValue)),
    ("store_many with a None value", lambda c: c.store_many({"a": None}), error(InvalidValue)),
    ("store_many with an empty key", lambda c: c.store_many({"": "1"}), error(InvalidKey)),
    ("store_many of nothing", lambda c: c.store_many({}), ok({})),
    ("store_many with subclasses", lambda c: c.store_many({Color.GREEN: Blob(b"g"), "plain": Color.RED}),
     ok({"green": "saved", "plain": "saved"})),
    ("read them back plain", lambda c: c.get_many(["green", "plain"]), ok({"green": b"g", "plain": "red"})),
    ("cas expecting an int", lambda c: c.cas("red", 5, "v"), ok(False)),
    ("cas expecting a set", lambda c: c.cas("red", {"green"}, "v"), error(InvalidValue)),
    ("cas to None", lambda c: c.cas("red", "green", None), error(InvalidValue)),
    ("cas on an int key", lambda c: c.cas(5, None, "v"), error(InvalidKey)),
    ("cas expecting a memoryview", lambda c: c.cas("red", memoryview(b"green"), "v"), error(InvalidValue)),
    ("cas expecting a StrEnum", lambda c: c.cas("red", Color.GREEN, Color.RED), ok(True)),
    ("cas expecting bytes where a str is", lambda c: c.cas("red", b"red", "x"), ok(False)),
    ("cas on an absent key with None", lambda c: c.cas("fresh", None, Blob(b"f")), ok(True)),
    ("delete by a StrEnum key", lambda c: c.delete(Color.GREEN), ok(True)),
    ("delete a bytes key", lambda c: c.delete(b"red"), error(InvalidKey)),
    ("every key, plain and sorted", lambda c: c.keys(), ok(sorted(["red", "blob", "empty-str", "empty-bytes", LONGEST_KEY, WIDE_KEY,
                                                                  "ключ", "🔑", "plain", "fresh", "bool", "int", "float", "list"]))),
    ("size", lambda c: c.size(), ok(14)),
]


def run_sequence(client: Operations) -> list[tuple[str, tuple]]:
    """Each step's outcome: ("ok", the result's shape) or ("error", the exception's class name)."""
    outcomes = []
    for what, step, _ in SEQUENCE:
        try:
            outcome = ok(step(client))
        except Exception as exc:
            outcome = ("error", type(exc).__name__)
        outcomes.append((what, outcome))
    return outcomes


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Operations]:
    from kvmgr.client.redis_transport import connect_redis

    with connect_redis(redis_url, timeout=5.0) as connected:
        connected.flush()
        yield connected


def test_both_backends_answer_odd_inputs_identically_and_as_expected(client: kvmgr.Client, redis_client: Operations) -> None:
    manager, redis = run_sequence(client), run_sequence(redis_client)
    disagreements = [(what, mine, theirs) for (what, mine), (_, theirs) in zip(manager, redis, strict=True) if mine != theirs]
    assert not disagreements, "the backends disagree (step, manager, redis):\n" + "\n".join(map(str, disagreements))
    unexpected = [(what, got, expected) for (what, got), (_, _, expected) in zip(manager, SEQUENCE, strict=True) if got != expected]
    assert not unexpected, "unexpected outcomes (step, got, expected):\n" + "\n".join(map(str, unexpected))
