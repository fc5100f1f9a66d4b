"""Plain-data values and the operations on them (incr/decr, add, pop, expiry, the mapping view), proven alike
on every backend: the kvmgr server and Redis. Where the two must differ (ints beyond 64 bits) the test says so."""

from __future__ import annotations

import enum
import math
import sys
import textwrap
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmgr.client.operations import Operations
from kvmgr.client.redis_transport import RedisClient
from kvmgr.config import MAX_VALUE_BYTES
from kvmgr.errors import InvalidValue, KeyNotFound, KvmgrError, WrongType
from kvmgr.protocol.values import Value, encoded_size, same_value
from kvmgr.tools.processes import ProcessGroup, child_environment

ON_ANY_CLIENT = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SCALARS = (st.text() | st.binary() | st.integers() | st.booleans()
           | st.floats(allow_nan=False, allow_infinity=False))
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.lists(children, max_size=4).map(tuple)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FINITE = st.floats(allow_nan=False, allow_infinity=False)


def reordered(value: Any) -> Any:
    """The same value with every dict in it in reverse key order (same_value, other bytes)."""
    if type(value) is dict:
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if type(value) in (list, tuple):
        return type(value)(reordered(item) for item in value)
    return value


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll condition until it holds; fail naming `what` if it does not within timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.005)


def gone(client: Operations, key: str) -> Callable[[], bool]:
    return lambda: not client.exists(key)


# --- values: round trips and type fidelity ---


@ON_ANY_CLIENT
@given(value=VALUES)
def test_any_plain_value_round_trips_with_its_types(any_client: Operations, value: Value) -> None:
    any_client.store("v", value)
    assert same_value(any_client.get("v"), value)
    assert same_value(any_client.get_many(["v"])["v"], value)
    assert any_client.cas("v", reordered(value), value) is True  # dict order does not count
    assert same_value(any_client.pop("v"), value)
    assert not any_client.exists("v")


@pytest.mark.parametrize("value", [
    (1, "a", b"b"), [(), [], {}], 1, 0, -(2**63), 2**100, True, False, 1.0, -0.0, 0.0, 5e-324, 1.7976931348623157e308,
    {"$tuple": [1]}, {"$bytes": "00"}, {"$dict": {}}, {"b": 1, "a": (True, 2.5)}, "", b"", "s1", "12", b"12", "f1.5",
], ids=repr)
def test_each_value_comes_back_exactly_as_stored(any_client: Operations, value: Value) -> None:
    any_client.store("k", value)
    got = any_client.get("k")
    assert same_value(got, value), f"{got!r} is not {value!r}"
    if isinstance(value, dict) and isinstance(got, dict):
        assert list(got) == list(value)  # insertion order kept


class Level(enum.IntEnum):
    HIGH = 3


def test_subclasses_are_stored_as_their_plain_type(any_client: Operations) -> None:
    any_client.store("k", [Level.HIGH, {"x": Level.HIGH}])
    assert same_value(any_client.get("k"), [3, {"x": 3}])


@pytest.mark.parametrize(("value", "named"), [
    (None, "None is not a value"), ({1, 2}, "set is not a value type"), (bytearray(b"x"), "bytearray is not a value type"),
    (object(), "object is not a value type"), ({1: "a"}, "dict keys must be str, not int"), ([None], "None is not a value"),
    (float("nan"), "must be finite"), ((float("inf"),), "must be finite"), (memoryview(b"x"), "memoryview is not a value type"),
], ids=lambda item: item if isinstance(item, str) else type(item).__name__)  # no object's address: the same ids in every process
def test_what_is_not_plain_data_is_refused_naming_it(any_client: Operations, value: Any, named: str) -> None:
    for attempt in (lambda: any_client.store("k", value), lambda: any_client.add("k", value),
                    lambda: any_client.store_many({"k": value}), lambda: any_client.cas("k", None, value)):
        with pytest.raises(InvalidValue, match=named):
            attempt()
    assert not any_client.exists("k")


def test_nesting_deeper_than_the_limit_is_refused(any_client: Operations) -> None:
    value: Any = "bottom"
    for _ in range(70):
        value = [value]
    with pytest.raises(InvalidValue, match="nest at most"):
        any_client.store("k", value)


def test_the_size_limit_counts_the_encoded_value(any_client: Operations) -> None:
    fits: Value = ["x" * (MAX_VALUE_BYTES - 4)]  # encoded ["xx..."]: the str and four bytes of JSON
    assert encoded_size(fits) == MAX_VALUE_BYTES
    with pytest.raises(InvalidValue, match=f"larger than {MAX_VALUE_BYTES} bytes"):
        any_client.store("k", ["x" * (MAX_VALUE_BYTES - 3)])
    assert any_client.store("k", fits) == "saved"
    assert same_value(any_client.get("k"), fits)


# --- cas: strict equality ---


def test_cas_tells_apart_what_python_calls_equal(any_client: Operations) -> None:
    any_client.store("k", 1)
    assert any_client.cas("k", 1.0, "x") is False
    assert any_client.cas("k", True, "x") is False
    assert any_client.cas("k", "1", "x") is False
    assert any_client.cas("k", 1, True) is True
    assert any_client.cas("k", 1, "x") is False
    assert any_client.cas("k", True, 0.0) is True
    assert any_client.cas("k", -0.0, "x") is False
    assert any_client.cas("k", (0.0,), "x") is False
    assert any_client.cas("k", 0.0, (1, 2)) is True
    assert any_client.cas("k", [1, 2], "x") is False
    assert any_client.cas("k", (1, 2), "done") is True
    assert any_client.get("k") == "done"


def test_cas_ignores_dict_order_at_any_depth(any_client: Operations) -> None:
    any_client.store("k", {"a": 1, "b": [{"c": 1, "d": (2,)}]})
    assert any_client.cas("k", {"b": [{"d": (2,), "c": 1}], "a": 1}, "swapped") is True
    assert any_client.cas("k", {"a": 1}, "again") is False
    assert any_client.get("k") == "swapped"


def test_cas_matches_a_float_whatever_digits_incr_wrote(any_client: Operations) -> None:
    any_client.store("k", 1.5)
    assert any_client.incr("k", 1.5) == 3.0  # Redis's script may write "3" where Python writes "3.0"
    assert any_client.cas("k", 3, "x") is False
    assert any_client.cas("k", 3.0, "swapped") is True
    assert any_client.get("k") == "swapped"


# --- incr and decr ---


def test_incr_and_decr_start_an_absent_key_at_zero(any_client: Operations) -> None:
    assert any_client.incr("up") == 1 and type(any_client.get("up")) is int
    assert any_client.decr("down") == -1
    assert any_client.incr("up", 41) == 42
    assert any_client.decr("down", 9) == -10
    result = any_client.incr("half", 0.5)
    assert result == 0.5 and type(result) is float


def test_any_float_makes_the_result_a_float(any_client: Operations) -> None:
    any_client.store("n", 1)
    assert same_value(any_client.incr("n", 0.5), 1.5)
    assert same_value(any_client.incr("n", 1), 2.5)
    assert same_value(any_client.decr("n", 0.5), 2.0)  # a whole number, still a float
    assert same_value(any_client.get("n"), 2.0)
    assert same_value(any_client.incr("n", -2), 0.0)
    assert same_value(any_client.decr("n", 1), -1.0)


@ON_ANY_CLIENT
@given(start=FINITE | st.integers(-(2**63), 2**63 - 1), by=FINITE)
def test_float_arithmetic_is_pythons(any_client: Operations, start: float, by: float) -> None:
    any_client.store("n", start)
    expected = start + by
    if not math.isfinite(expected):
        with pytest.raises(InvalidValue, match="finite"):
            any_client.incr("n", by)
        assert same_value(any_client.get("n"), start)
        return
    assert same_value(any_client.incr("n", by), expected)
    assert same_value(any_client.get("n"), expected)
    if math.isfinite(expected - by):
        assert same_value(any_client.decr("n", by), expected - by)


@ON_ANY_CLIENT
@given(start=st.integers(-(2**62), 2**62 - 1), by=st.integers(-(2**62), 2**62 - 1))
def test_int_arithmetic_is_exact_across_64_bits(any_client: Operations, start: int, by: int) -> None:
    any_client.store("n", start)
    assert same_value(any_client.incr("n", by), start + by)
    assert same_value(any_client.decr("n", by), start)


def test_ints_near_the_64_bit_edges_stay_exact(any_client: Operations) -> None:
    any_client.store("top", 2**63 - 3)
    assert any_client.incr("top") == 2**63 - 2
    assert any_client.incr("top") == 2**63 - 1
    any_client.store("bottom", -(2**63) + 2)
    assert any_client.decr("bottom", 2) == -(2**63)
    assert any_client.get("bottom") == -(2**63)
    assert any_client.incr("from-zero", 2**63 - 1) == 2**63 - 1
    assert any_client.decr("negative", 2**63) == -(2**63)
    assert any_client.incr("near", 2**53 + 1) == 2**53 + 1  # beyond 2**53 a double would lose it
    assert any_client.incr("near", 2) == 2**53 + 3


def test_ints_beyond_64_bits_stay_exact_on_the_manager_and_are_refused_on_redis(any_client: Operations) -> None:
    any_client.store("top", 2**63 - 1)
    any_client.store("huge", 2**80)
    if isinstance(any_client, RedisClient):
        for key, by in [("top", 1), ("huge", 1), ("top", 2**64), ("absent", 2**64)]:
            with pytest.raises(InvalidValue, match="64-bit"):
                any_client.incr(key, by)
        with pytest.raises(InvalidValue, match="64-bit"):
            any_client.decr("bottom-less", -(2**63))  # 0 + 2**63
        assert any_client.get("top") == 2**63 - 1 and any_client.get("huge") == 2**80
        assert not any_client.exists("absent")
    else:
        assert any_client.incr("top") == 2**63
        assert any_client.incr("huge", 2**80) == 2**81
        assert any_client.decr("bottom-less", -(2**63)) == 2**63
    any_client.store("huge-too", 2**80)
    assert same_value(any_client.incr("huge-too", 0.5), float(2**80) + 0.5)  # a float result: the int becomes a float


@pytest.mark.parametrize("held", ["7", b"7", True, False, [1], (1,), {"n": 1}], ids=repr)
def test_incr_on_a_value_that_is_not_a_number_is_wrong_type_and_changes_nothing(any_client: Operations, held: Value) -> None:
    any_client.store("k", held, ttl=60)
    for attempt in (lambda: any_client.incr("k"), lambda: any_client.decr("k", 1.5), lambda: any_client.incr("k", 2**70)):
        with pytest.raises(WrongType, match=f"holds a {type(held).__name__}") as caught:
            attempt()
        assert isinstance(caught.value, KvmgrError) and isinstance(caught.value, TypeError)
    assert same_value(any_client.get("k"), held)
    assert any_client.ttl("k") is not None


@pytest.mark.parametrize("by", [float("nan"), float("inf"), -float("inf"), True, "1", None, [1]], ids=repr)
def test_incr_refuses_a_delta_that_is_not_a_finite_number(any_client: Operations, by: Any) -> None:
    any_client.store("k", 1)
    with pytest.raises(InvalidValue, match="by must be"):
        any_client.incr("k", by)
    with pytest.raises(InvalidValue, match="by must be"):
        any_client.decr("k", by)
    assert same_value(any_client.get("k"), 1)


def test_an_incr_that_would_overflow_a_float_changes_nothing(any_client: Operations) -> None:
    any_client.store("k", 1.7976931348623157e308)
    with pytest.raises(InvalidValue, match="finite"):
        any_client.incr("k", 1e308)
    with pytest.raises(InvalidValue, match="finite"):
        any_client.decr("k", -1e308)
    assert same_value(any_client.get("k"), 1.7976931348623157e308)


# --- add and pop ---


def test_add_stores_only_when_absent(any_client: Operations) -> None:
    assert any_client.add("k", (1, "one")) is True
    assert any_client.add("k", "other") is False
    assert same_value(any_client.get("k"), (1, "one"))
    any_client.delete("k")
    assert any_client.add("k", 2) is True
    assert same_value(any_client.get("k"), 2)


def test_pop_returns_the_value_and_removes_it(any_client: Operations) -> None:
    any_client.store("k", {"a": (1.5, True)})
    assert same_value(any_client.pop("k"), {"a": (1.5, True)})
    assert not any_client.exists("k")
    with pytest.raises(KeyNotFound):
        any_client.pop("k")
    assert any_client.pop("k", None) is None
    assert any_client.pop("k", "default") == "default"
    assert any_client.size() == 0


# --- expiry ---


def test_a_key_stored_with_a_ttl_expires(any_client: Operations) -> None:
    assert any_client.store("k", "v", ttl=0.2) == "saved"
    left = any_client.ttl("k")
    assert left is not None and 0 < left <= 0.2
    wait_until(gone(any_client, "k"), "expiry of k")
    with pytest.raises(KeyNotFound):
        any_client.ttl("k")
    assert any_client.store("k", "again") == "saved"  # it was gone, so this is a new key


def test_ttl_is_none_without_expiry_and_key_not_found_when_absent(any_client: Operations) -> None:
    any_client.store("k", 1)
    assert any_client.ttl("k") is None
    with pytest.raises(KeyNotFound):
        any_client.ttl("absent")


def test_add_with_a_ttl_expires_and_then_adds_again(any_client: Operations) -> None:
    assert any_client.add("k", 1, ttl=0.1) is True
    assert any_client.add("k", 2, ttl=0.1) is False
    wait_until(lambda: any_client.add("k", 3), "add after expiry")
    assert same_value(any_client.get("k"), 3) and any_client.ttl("k") is None


def test_expire_and_persist(any_client: Operations) -> None:
    assert any_client.expire("absent", 1) is False
    assert any_client.persist("absent") is False
    any_client.store("k", "v")
    assert any_client.persist("k") is False  # it had no expiry
    assert any_client.expire("k", 30) is True
    left = any_client.ttl("k")
    assert left is not None and 29 < left <= 30
    assert any_client.persist("k") is True
    assert any_client.ttl("k") is None
    assert any_client.expire("k", 0.05) is True
    wait_until(gone(any_client, "k"), "expiry after expire()")
    assert any_client.expire("k", 1) is False


def test_incr_keeps_the_expiry_and_plain_writes_clear_it(any_client: Operations) -> None:
    writes: list[Callable[[], object]] = [
        lambda: any_client.store("k", 1), lambda: any_client.store_many({"k": 1}), lambda: any_client.cas("k", 5, 1),
    ]
    for write in writes:
        any_client.store("k", 4, ttl=30)
        assert any_client.incr("k") == 5
        assert any_client.incr("k", 0.0) == 5.0 and any_client.ttl("k") is not None  # the float path too
        any_client.store("k", 5, ttl=30)
        write()
        assert any_client.ttl("k") is None, "a plain write should clear the expiry"
        assert same_value(any_client.get("k"), 1)


def test_store_with_a_ttl_replaces_the_expiry(any_client: Operations) -> None:
    any_client.store("k", 1, ttl=0.05)
    assert any_client.store("k", 2, ttl=60) == "updated"
    left = any_client.ttl("k")
    assert left is not None and left > 59


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf"), True, "1", 10**12], ids=repr)
def test_a_ttl_must_be_a_positive_number(any_client: Operations, ttl: Any) -> None:
    any_client.store("k", 1)
    for attempt in (lambda: any_client.store("k", 2, ttl), lambda: any_client.add("new", 2, ttl), lambda: any_client.expire("k", ttl)):
        with pytest.raises(InvalidValue, match="ttl must be"):
            attempt()
    assert any_client.ttl("k") is None and same_value(any_client.get("k"), 1) and not any_client.exists("new")


def test_an_expired_key_is_gone_at_once_for_every_operation(any_client: Operations) -> None:
    keys = [f"k{number}" for number in range(50)]
    any_client.pipeline([("store", key, number, 0.1) for number, key in enumerate(keys)])
    any_client.store("probe", "last", ttl=0.1)  # stored last, so it expires last
    any_client.store("stays", "here")
    wait_until(gone(any_client, "probe"), "expiry of the probe")
    # the others expired too, untouched since: nothing may count them, see them or use their values
    assert any_client.size() == 1
    assert any_client.keys() == ["stays"]
    assert any_client.get_many(keys) == {}
    with pytest.raises(KeyNotFound):
        any_client.get(keys[1])
    assert not any_client.exists(keys[2])
    assert any_client.cas(keys[3], 3, "x") is False
    assert any_client.cas(keys[4], None, "new") is True
    assert any_client.incr(keys[5], 10) == 10
    assert any_client.add(keys[6], "added") is True
    with pytest.raises(KeyNotFound):
        any_client.pop(keys[7])
    assert any_client.expire(keys[8], 5) is False and any_client.persist(keys[9]) is False
    assert any_client.size() == 4


def test_a_longer_ttl_is_not_cut_short(any_client: Operations) -> None:
    any_client.store("short", 1, ttl=0.05)
    any_client.store("long", 1, ttl=30)
    wait_until(gone(any_client, "short"), "expiry of the short key")
    assert any_client.exists("long") and any_client.size() == 1


# --- the mapping view ---


def test_the_mapping_view_behaves_like_a_dict(any_client: Operations) -> None:
    mapping = any_client.as_mapping()
    assert isinstance(mapping, MutableMapping)
    mapping["a"] = 1
    mapping["b"] = (2, "two")
    assert mapping["a"] == 1 and same_value(mapping["b"], (2, "two"))
    assert "a" in mapping and "zz" not in mapping and 5 not in mapping
    assert len(mapping) == 2 and list(mapping) == ["a", "b"] and dict(mapping.items()) == {"a": 1, "b": (2, "two")}
    with pytest.raises(KeyError):
        mapping["zz"]
    assert mapping.get("zz") is None and mapping.get("zz", 0) == 0 and mapping.get("a") == 1
    mapping.update({"c": 3.5}, d=[4])
    assert same_value(mapping["c"], 3.5) and same_value(mapping["d"], [4])
    assert mapping.setdefault("e", 5) == 5 and mapping.setdefault("e", 6) == 5
    assert mapping.pop("e") == 5 and mapping.pop("e", "gone") == "gone"
    with pytest.raises(KeyError):
        mapping.pop("e")
    del mapping["d"]
    with pytest.raises(KeyError):
        del mapping["d"]
    assert sorted(mapping) == ["a", "b", "c"] and len(mapping) == 3


def test_the_mapping_view_counts_with_incr_not_read_then_write(any_client: Operations) -> None:
    mapping = any_client.as_mapping()
    mapping["hits"] = 0
    for _ in range(5):
        any_client.incr("hits")
    assert mapping["hits"] == 5


# --- many processes at once ---

INCREMENTS = 1000
PROCESSES = 8
COUNTER = """
    import sys
    import kvmgr
    with kvmgr.connect(sys.argv[1], timeout=30.0, name=sys.argv[2]) as client:
        client.rendezvous("counters", {processes}, timeout=60)
        for _ in range({increments}):
            client.incr("counter")
"""


def test_eight_processes_incrementing_one_key_lose_no_update(any_client: Operations, request: pytest.FixtureRequest,
                                                             group: ProcessGroup) -> None:
    if isinstance(any_client, RedisClient):
        address, env = any_client.address, None
    else:
        server = request.getfixturevalue("server")
        address, env = server.address_text, child_environment(server.authkey)
    code = textwrap.dedent(COUNTER.format(processes=PROCESSES, increments=INCREMENTS))
    processes = [group.launch([sys.executable, "-c", code, address, f"p{number}"], env) for number in range(PROCESSES)]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
    assert same_value(any_client.get("counter"), PROCESSES * INCREMENTS)
