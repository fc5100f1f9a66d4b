"""kvmgr.protocol.validation's normalize_call, which every client runs on a call before it sends it."""

from __future__ import annotations

import pytest

from kvmgr.errors import InvalidKey, InvalidValue, UnknownOperation
from kvmgr.protocol import wire
from kvmgr.protocol.validation import normalize_call
from tests.test_odd_inputs import SURROGATE, Blob, Color, Level


def test_normalize_call_knows_every_exposed_operation() -> None:
    for method in wire.EXPOSED:
        with pytest.raises(TypeError, match=f"^{method} takes"):
            normalize_call(method, ("x",) * 4)
    with pytest.raises(UnknownOperation, match="'drop_all' is not exposed"):
        normalize_call("drop_all", ())


@pytest.mark.parametrize(("method", "args", "plain"), [
    ("store", (Color.RED, Blob(b"x")), ("red", b"x")),
    ("cas", (Color.RED, None, Color.GREEN), ("red", None, "green")),
    ("cas", ("k", Blob(b"old"), "new"), ("k", b"old", "new")),
    ("get_many", ((Color.RED, "b"),), (["red", "b"],)),
    ("store_many", ({Color.RED: Blob(b"1")},), ({"red": b"1"},)),
    ("rendezvous", (Color.RED, 2, 1.5), ("red", 2, 1.5)),
    ("keys", (Color.RED, 10, None), ("red", 10, None)),
    ("keys", (), ()),
    ("size", (), ()),
    ("store", ("k", Level.HIGH, 2), ("k", 3, 2.0)),
    ("store", ("k", (Level.HIGH, [Color.RED])), ("k", (3, ["red"]))),
    ("cas", ("k", 1, 1.0), ("k", 1, 1.0)),
    ("incr", ("k", Level.HIGH), ("k", 3)),
    ("decr", ("k", 0.5), ("k", 0.5)),
    ("add", ("k", True, 0.25), ("k", True, 0.25)),
    ("expire", ("k", 1), ("k", 1.0)),
])
def test_normalize_call_gives_plain_types(method: str, args: tuple, plain: tuple) -> None:
    normalized = normalize_call(method, args)
    assert normalized == plain
    assert [type(arg) for arg in normalized] == [type(arg) for arg in plain]
    for mapping in (arg for arg in normalized if isinstance(arg, dict)):
        assert all(type(key) is str and type(value) in (str, bytes) for key, value in mapping.items())
    for inner, should_be in zip(normalized, plain, strict=True):
        if isinstance(inner, tuple):
            assert [type(item) for item in inner] == [type(item) for item in should_be]
    for keys in (arg for arg in normalized if isinstance(arg, list)):
        assert all(type(key) is str for key in keys)


def test_normalize_call_checks_no_sizes_the_server_decides_them() -> None:
    assert normalize_call("store", ("k" * 10_000, "v" * 100)) == ("k" * 10_000, "v" * 100)


@pytest.mark.parametrize(("method", "args", "refused"), [
    ("store", ("k", memoryview(b"x")), InvalidValue),
    ("store", ("k", bytearray(b"x")), InvalidValue),
    ("store", (f"k{SURROGATE}", "v"), InvalidKey),
    ("rendezvous", ("r", True), InvalidValue),
    ("rendezvous", ("r", 2, float("nan")), InvalidValue),
    ("rendezvous", ("r", 2, -1), InvalidValue),
    ("keys", (None, True), InvalidValue),
    ("keys", (f"p{SURROGATE}",), InvalidValue),
    ("get_many", ("ab",), InvalidKey),
    ("store_many", ([("a", "1")],), InvalidValue),
    ("store", ("k", None), InvalidValue),
    ("store", ("k", {1, 2}), InvalidValue),
    ("store", ("k", float("inf")), InvalidValue),
    ("store", ("k", {1: "a"}), InvalidValue),
    ("store", ("k", "v", 0), InvalidValue),
    ("store", ("k", "v", True), InvalidValue),
    ("add", ("k", "v", float("nan")), InvalidValue),
    ("expire", ("k", -1), InvalidValue),
    ("incr", ("k", True), InvalidValue),
    ("incr", ("k", float("nan")), InvalidValue),
    ("decr", ("k", "1"), InvalidValue),
    ("pop", (5,), InvalidKey),
])
def test_normalize_call_refuses_what_no_server_accepts(method: str, args: tuple, refused: type[Exception]) -> None:
    with pytest.raises(refused):
        normalize_call(method, args)
