"""The scenario loader: the new operations' fields, repeated steps with final-state expectations, shipped scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmgr.errors import ScenarioError
from kvmgr.tools.scenarios import FinalState, find_scenario, load_scenario, shipped_scenarios


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def step(**fields: str) -> str:
    """One [[steps]] table for alice, its fields given as TOML source."""
    return "[[steps]]\nactors = ['alice']\n" + "".join(f"{name} = {value}\n" for name, value in fields.items())


def test_new_operations_parse_with_their_arguments(tmp_path: Path) -> None:
    text = "".join([
        step(op="'store'", key="'s'", value="[1, 2.5, true, {a = 'x'}]", ttl="30", expect="'saved'"),
        step(op="'incr'", key="'n'", by="0.5", expect="0.5"),
        step(op="'decr'", key="'n'", expect="-0.5"),
        step(op="'add'", key="'a'", value="7", ttl="1.5", expect="true"),
        step(op="'pop'", key="'a'", expect="7"),
        step(op="'expire'", key="'s'", ttl="10", expect="true"),
        step(op="'ttl'", key="'s'", expect_one_of="[10.0]"),
        step(op="'persist'", key="'s'", expect="true"),
        step(op="'unsafe_increment'", key="'u'", repeat="3", expect_final="3"),
    ])
    steps = load_scenario(scenario(tmp_path, text)).steps
    assert steps[0].value == [1, 2.5, True, {"a": "x"}] and steps[0].ttl == 30.0
    assert (steps[1].by, steps[2].by, steps[3].ttl, steps[5].ttl) == (0.5, None, 1.5, 10.0)
    assert steps[3].value == 7 and type(steps[3].value) is int
    assert (steps[8].repeat, steps[8].calls, steps[8].final) == (3, 3, FinalState(value=3))


@pytest.mark.parametrize(("fields", "problem"), [
    ({"op": "'incr'", "key": "'n'", "repeat": "5", "expect": "5"}, "'repeat' needs a final-state expectation"),
    ({"op": "'incr'", "key": "'n'", "repeat": "0", "expect_final": "5"}, "'repeat' must be a whole number from 1 to 1000000 (got 0)"),
    ({"op": "'incr'", "key": "'n'", "repeat": "true", "expect_final": "5"}, "'repeat' must be a whole number"),
    ({"op": "'incr'", "key": "'n'", "repeat": "2.0", "expect_final": "5"}, "'repeat' must be a whole number"),
    ({"op": "'incr'", "key": "'n'", "expect_at_most": "'ten'"}, "'expect_at_most' must be a number (got \"ten\")"),
    ({"op": "'incr'", "key": "'n'", "expect_at_least": "true"}, "'expect_at_least' must be a number (got true)"),
    ({"op": "'incr'", "key": "'n'", "expect_at_most": "1", "expect_at_least": "2"}, "'expect_at_least' is above 'expect_at_most'"),
    ({"op": "'incr'", "key": "'n'", "expect": "1", "expect_final": "1"}, "exactly one of expect, expect_one_of, expect_error, or a final"),
    ({"op": "'size'", "repeat": "2", "expect_final": "1"}, "a final-state expectation needs an operation on one key (size has none)"),
    ({"op": "'incr'", "key": "'n'", "expect_final": "1", "same_result": "true"}, "'same_result' goes with expect or expect_one_of"),
    ({"op": "'get'", "key": "'k'", "by": "2", "expect": "1"}, "'by' does not apply to get"),
    ({"op": "'get'", "key": "'k'", "ttl": "2", "expect": "1"}, "'ttl' does not apply to get"),
    ({"op": "'incr'", "key": "'k'", "value": "'v'", "expect": "1"}, "'value' does not apply to incr"),
    ({"op": "'size'", "key": "'k'", "expect": "1"}, "'key' does not apply to size"),
    ({"op": "'expire'", "key": "'k'", "expect": "true"}, "expire needs 'ttl'"),
    ({"op": "'add'", "key": "'k'", "expect": "true"}, "add needs 'value'"),
    ({"op": "'unsafe_increment'", "expect_final": "1"}, "unsafe_increment needs 'key'"),
    ({"op": "'incr'", "key": "'n'", "by": "true", "expect": "1"}, "by must be an int or a finite float, not True"),
    ({"op": "'incr'", "key": "'n'", "by": "inf", "expect": "1"}, "by must be an int or a finite float, not inf"),
    ({"op": "'store'", "key": "'k'", "value": "'v'", "ttl": "-1", "expect": "'saved'"}, "ttl must be a number of seconds above 0"),
    ({"op": "'store'", "key": "'k'", "value": "1979-05-27", "expect": "'saved'"}, "value: date is not a value type"),
    ({"op": "'store'", "key": "'k'", "value": "nan", "expect": "'saved'"}, "value: a float must be finite, not nan"),
    ({"op": "'cas'", "key": "'k'", "expected": "[1979-05-27]", "value": "1", "expect": "true"}, "expected value: date is not a value"),
    ({"op": "'get'", "key": "''", "expect": "1"}, "'key' must be a non-empty string"),
    ({"op": "'incr'", "key": "'n'", "expect_final": "1979-05-27"}, "expect_final: value: date is not a value type"),
])
def test_malformed_new_fields_are_one_line_naming_the_step(tmp_path: Path, fields: dict[str, str], problem: str) -> None:
    path = scenario(tmp_path, step(name="'odd'", **fields))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: step 1 (odd): ") and "\n" not in message
    assert problem in message, message


def test_final_state_accepts_with_types_and_bounds() -> None:
    exact = FinalState(value=1000)
    assert exact.accepts(1000) and not exact.accepts(1000.0) and not exact.accepts(999) and not exact.accepts(None)
    bounded = FinalState(at_most=1000, at_least=1)
    assert bounded.accepts(1) and bounded.accepts(1000) and bounded.accepts(2.5)
    assert not bounded.accepts(0) and not bounded.accepts(1001) and not bounded.accepts(True) and not bounded.accepts("5")
    assert (exact.describe(), bounded.describe(), FinalState(at_most=10).describe()) == (
        "final 1000", "final from 1 to 1000", "final at most 10",
    )


def test_shipped_scenarios_are_found_by_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = shipped_scenarios()
    assert {"seed", "counter"} <= set(shipped) and all(path.is_file() for path in shipped.values())
    assert find_scenario("counter") == shipped["counter"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "counter").write_text(step(op="'size'", expect="0"))
    assert find_scenario("counter") == Path("counter"), "a file of that name comes first"
    assert find_scenario("nope.toml") == Path("nope.toml"), "a path is left for the loader to report"
    with pytest.raises(ScenarioError, match=r"^nope: no such file, and no shipped scenario of that name \(shipped: counter, seed"):
        find_scenario("nope")


def test_counter_scenario_is_as_the_issue_describes() -> None:
    counter = load_scenario(shipped_scenarios()["counter"])
    unsafe, atomic = counter.steps
    assert (unsafe.op, unsafe.actors, unsafe.repeat, unsafe.final) == ("unsafe_increment", ("alice", "bob"), 500, FinalState(at_most=1000))
    assert (atomic.op, atomic.actors, atomic.repeat, atomic.final) == ("incr", ("alice", "bob"), 500, FinalState(value=1000))
    assert unsafe.key != atomic.key


def test_actor_names_are_put_in_every_str_of_a_value(tmp_path: Path) -> None:
    text = "[[steps]]\nactors = ['alice', 'bob']\nop = 'store'\nkey = 'k'\nvalue = { by = '{actor}', tags = ['{actor}-1', 2] }\n" \
           "expect = 'saved'\n"
    [only] = load_scenario(scenario(tmp_path, text)).steps
    assert only.value_for("bob") == {"by": "bob", "tags": ["bob-1", 2]}
    assert only.value == {"by": "{actor}", "tags": ["{actor}-1", 2]}
