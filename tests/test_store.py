"""Store semantics through a real server: store/get/quit, the new operations, and validation."""

from __future__ import annotations

import pytest

import kvmgr
from kvmgr.errors import InvalidKey, InvalidValue, KeyNotFound


def test_store_says_saved_then_updated(client: kvmgr.Client) -> None:
    assert client.store("foo", "bar") == "saved"
    assert client.store("foo", "baz") == "updated"
    assert client.get("foo") == "baz"


def test_bytes_values_round_trip(client: kvmgr.Client) -> None:
    client.store("blob", b"\x00\xff")
    assert client.get("blob") == b"\x00\xff"


def test_missing_key_raises_key_not_found_a_key_error(client: kvmgr.Client) -> None:
    with pytest.raises(KeyNotFound) as caught:
        client.get("abc")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "Invalid Key:abc"


@pytest.mark.parametrize("key", [1, "", None, b"bytes-key", ("t",)])
def test_bad_keys_are_rejected_and_the_server_keeps_serving(client: kvmgr.Client, key: object) -> None:
    with pytest.raises(InvalidKey, match="key must be a non-empty str"):
        client.store(key, "v")  # type: ignore[arg-type]
    assert client.store("still", "serving") == "saved"


@pytest.mark.parametrize("value", [1, None, 2.5, ["list"], {"a": 1}])
def test_bad_values_are_rejected_naming_the_type(client: kvmgr.Client, value: object) -> None:
    with pytest.raises(InvalidValue, match=f"not {type(value).__name__}"):
        client.store("k", value)  # type: ignore[arg-type]
    with pytest.raises(KeyNotFound):
        client.get("k")


def test_invalid_errors_are_type_errors(client: kvmgr.Client) -> None:
    with pytest.raises(TypeError):
        client.store("", "v")


def test_delete_exists_keys_size(client: kvmgr.Client) -> None:
    client.store("a", "1")
    client.store("b", "2")
    assert client.exists("a") and not client.exists("zz")
    assert client.keys() == ["a", "b"]
    assert client.size() == 2
    assert client.delete("a") is True
    assert client.delete("a") is False
    assert client.keys() == ["b"]


def test_cas_swaps_only_on_the_expected_value(client: kvmgr.Client) -> None:
    assert client.cas("k", None, "v1") is True
    assert client.cas("k", None, "v2") is False
    assert client.cas("k", "wrong", "v2") is False
    assert client.cas("k", "v1", "v2") is True
    assert client.get("k") == "v2"


def test_get_many_and_store_many(client: kvmgr.Client) -> None:
    assert client.store_many({"a": "1", "b": "2"}) == {"a": "saved", "b": "saved"}
    assert client.store_many({"a": "3", "c": "4"}) == {"a": "updated", "c": "saved"}
    assert client.get_many(["a", "b", "c", "missing"]) == {"a": "3", "b": "2", "c": "4"}


def test_store_many_is_all_or_nothing_on_bad_input(client: kvmgr.Client) -> None:
    with pytest.raises(InvalidValue):
        client.store_many({"good": "1", "bad": 2})  # type: ignore[dict-item]
    assert not client.exists("good")


def test_unexposed_method_is_refused(client: kvmgr.Client) -> None:
    with pytest.raises(AttributeError, match="not exposed"):
        client.call("_check_key", "x")
    assert client.store("after", "x") == "saved"


def test_pipeline_returns_results_in_order(client: kvmgr.Client) -> None:
    results = client.pipeline([("store", "a", "1"), ("get", "a"), ("cas", "a", "1", "2"), ("get", "a")])
    assert results == ["saved", "1", True, "2"]


def test_pipeline_errors_in_place_or_raised(client: kvmgr.Client) -> None:
    results = client.pipeline([("get", "missing"), ("store", "", "v"), ("store", "ok", "v")], raise_on_error=False)
    assert isinstance(results[0], KeyNotFound) and isinstance(results[1], InvalidKey) and results[2] == "saved"
    with pytest.raises(KeyNotFound):
        client.pipeline([("store", "x", "1"), ("get", "missing")])
    assert client.get("x") == "1"


def test_pipeline_of_large_values_does_not_deadlock(client: kvmgr.Client) -> None:
    big = "x" * 1_000_000
    stores = [("store", f"b{i}", big) for i in range(30)]
    gets = [("get", f"b{i}") for i in range(30)]
    results = client.pipeline(stores + gets)
    assert results[:30] == ["saved"] * 30 and results[30:] == [big] * 30


def test_many_pipelined_calls_exceed_the_window(client: kvmgr.Client) -> None:
    results = client.pipeline([("store", f"k{i}", str(i)) for i in range(2000)])
    assert results == ["saved"] * 2000
    assert client.size() == 2000
