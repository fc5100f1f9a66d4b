"""The key-value semantics, proven the same on every backend: a kvmgr server and Redis (when redis-server exists)."""

from __future__ import annotations

import pytest

from kvmgr.client.operations import Operations
from kvmgr.errors import InvalidKey, InvalidValue, KeyNotFound


def test_store_says_saved_then_updated(any_client: Operations) -> None:
    assert any_client.store("foo", "bar") == "saved"
    assert any_client.store("foo", "baz") == "updated"
    assert any_client.get("foo") == "baz"


def test_bytes_and_str_values_round_trip_as_their_own_type(any_client: Operations) -> None:
    any_client.store("blob", b"\x00\xff")
    any_client.store("text", "h\u00e9llo \u2603")
    any_client.store("looks-like-bytes", "\x00\xff")
    assert any_client.get("blob") == b"\x00\xff"
    assert any_client.get("text") == "h\u00e9llo \u2603"
    assert any_client.get("looks-like-bytes") == "\x00\xff"


def test_empty_values_are_present_not_absent(any_client: Operations) -> None:
    assert any_client.store("empty", "") == "saved"
    assert any_client.store("empty", "") == "updated"
    assert any_client.get("empty") == ""
    any_client.store("nothing", b"")
    assert any_client.get("nothing") == b""
    assert any_client.cas("empty", None, "x") is False
    assert any_client.cas("empty", "", "x") is True


def test_missing_key_raises_key_not_found_a_key_error(any_client: Operations) -> None:
    with pytest.raises(KeyNotFound) as caught:
        any_client.get("abc")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "Invalid Key:abc"


@pytest.mark.parametrize("key", [1, "", None, b"bytes-key", ("t",)])
def test_bad_keys_are_rejected_and_the_client_keeps_working(any_client: Operations, key: object) -> None:
    with pytest.raises(InvalidKey, match="key must be a non-empty str"):
        any_client.store(key, "v")  # type: ignore[arg-type]
    assert any_client.store("still", "serving") == "saved"


@pytest.mark.parametrize(("value", "named"), [
    (None, "None is not a value"), ({"set"}, "set is not a value type"), (bytearray(b"x"), "bytearray is not a value type"),
    (range(3), "range is not a value type"), ({"a": None}, "None is not a value"), ({("t",): 1}, "dict keys must be str, not tuple"),
])
def test_bad_values_are_rejected_naming_the_type(any_client: Operations, value: object, named: str) -> None:
    with pytest.raises(InvalidValue, match=named):
        any_client.store("k", value)  # type: ignore[arg-type]
    with pytest.raises(KeyNotFound):
        any_client.get("k")


@pytest.mark.parametrize("value", [1, -2.5, True, ["list", 1], ("tuple",), {"a": {"b": [1.5, b"x"]}}], ids=repr)
def test_plain_data_values_are_stored_with_their_types(any_client: Operations, value: object) -> None:
    assert any_client.store("k", value) == "saved"  # type: ignore[arg-type]
    got = any_client.get("k")
    assert got == value and type(got) is type(value)


def test_oversized_key_is_rejected_like_the_store_does(any_client: Operations) -> None:
    with pytest.raises(InvalidKey, match="key is longer than 1024 bytes"):
        any_client.store("k" * 1025, "v")


def test_invalid_errors_are_type_errors(any_client: Operations) -> None:
    with pytest.raises(TypeError):
        any_client.store("", "v")


def test_delete_exists_keys_size(any_client: Operations) -> None:
    any_client.store("b", "2")
    any_client.store("a", "1")
    assert any_client.exists("a") and not any_client.exists("zz")
    assert any_client.keys() == ["a", "b"]
    assert any_client.size() == 2
    assert any_client.delete("a") is True
    assert any_client.delete("a") is False
    assert any_client.keys() == ["b"]


def test_keys_are_sorted_and_complete_beyond_one_scan_page(any_client: Operations) -> None:
    names = [f"key-{number:04d}" for number in range(2500)]
    any_client.store_many({name: "v" for name in reversed(names)})
    assert any_client.keys() == names
    assert any_client.size() == 2500


def test_cas_swaps_only_on_the_expected_value(any_client: Operations) -> None:
    assert any_client.cas("k", None, "v1") is True
    assert any_client.cas("k", None, "v2") is False
    assert any_client.cas("k", "wrong", "v2") is False
    assert any_client.cas("k", b"v1", "v2") is False  # bytes never equal str, as in Python
    assert any_client.cas("k", "v1", "v2") is True
    assert any_client.get("k") == "v2"


def test_cas_validates_expected_and_value(any_client: Operations) -> None:
    with pytest.raises(InvalidValue, match="expected value: object is not a value type"):
        any_client.cas("k", object(), "v")  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match="None is not a value"):
        any_client.cas("k", None, None)  # type: ignore[arg-type]
    assert not any_client.exists("k")


def test_get_many_and_store_many(any_client: Operations) -> None:
    assert any_client.store_many({"a": "1", "b": b"2"}) == {"a": "saved", "b": "saved"}
    assert any_client.store_many({"a": "3", "c": "4"}) == {"a": "updated", "c": "saved"}
    assert any_client.get_many(["a", "b", "c", "missing"]) == {"a": "3", "b": b"2", "c": "4"}
    assert any_client.get_many([]) == {}
    assert any_client.store_many({}) == {}


def test_get_many_rejects_bad_keys(any_client: Operations) -> None:
    with pytest.raises(InvalidKey, match="key must be a non-empty str"):
        any_client.get_many(["ok", ""])


def test_store_many_is_all_or_nothing_on_bad_input(any_client: Operations) -> None:
    with pytest.raises(InvalidValue):
        any_client.store_many({"good": "1", "bad": None})  # type: ignore[dict-item]
    assert not any_client.exists("good")


def test_store_many_rejects_a_non_mapping(any_client: Operations) -> None:
    with pytest.raises(InvalidValue, match="store_many takes a dict of key -> value, not list"):
        any_client.call("store_many", [("a", "1")])


def test_unexposed_method_is_refused(any_client: Operations) -> None:
    with pytest.raises(AttributeError, match="not exposed"):
        any_client.call("_check_key", "x")
    assert any_client.call("store", "after", "x") == "saved"


def test_pipeline_returns_results_in_order(any_client: Operations) -> None:
    results = any_client.pipeline([("store", "a", "1"), ("get", "a"), ("cas", "a", "1", "2"), ("get", "a")])
    assert results == ["saved", "1", True, "2"]


def test_pipeline_errors_in_place_or_raised(any_client: Operations) -> None:
    results = any_client.pipeline([("get", "missing"), ("store", "", "v"), ("store", "ok", "v")], raise_on_error=False)
    assert isinstance(results[0], KeyNotFound) and isinstance(results[1], InvalidKey) and results[2] == "saved"
    with pytest.raises(KeyNotFound):
        any_client.pipeline([("store", "x", "1"), ("get", "missing")])
    assert any_client.get("x") == "1"


def test_keys_pages_by_prefix_limit_and_after(any_client: Operations) -> None:
    any_client.store_many({key: "v" for key in ["a1", "a2", "a3", "b1", "a*", "a[", "c"]})
    assert any_client.keys() == ["a*", "a1", "a2", "a3", "a[", "b1", "c"]
    assert any_client.keys(prefix="a") == ["a*", "a1", "a2", "a3", "a["]
    assert any_client.keys(prefix="a*") == ["a*"]  # glob characters are plain characters in a prefix
    assert any_client.keys(prefix="a", limit=2) == ["a*", "a1"]
    assert any_client.keys(prefix="a", limit=2, after="a1") == ["a2", "a3"]
    assert any_client.keys(after="b1") == ["c"]
    assert list(any_client.iter_keys(page=2)) == any_client.keys()
    assert list(any_client.iter_keys(prefix="a", page=3)) == ["a*", "a1", "a2", "a3", "a["]


@pytest.mark.parametrize("arguments", [(1, None, None), (None, 0, None), (None, True, None), (None, None, 5)])
def test_keys_refuses_bad_page_arguments(any_client: Operations, arguments: tuple) -> None:
    with pytest.raises(InvalidValue, match="keys: "):
        any_client.keys(*arguments)
