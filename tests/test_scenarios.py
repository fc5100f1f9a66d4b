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


def assert_one_line_about_the_step(tmp_path: Path, fields: dict[str, str], problem: str) -> None:
    """A scenario of one step with these fields is refused in one line naming the step and the problem."""
    path = scenario(tmp_path, step(name="'odd'", **fields))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: step 1 (odd): ") and "\n" not in message
    assert problem in message, message


@pytest.mark.parametrize(("fields", "problem"), [
    ({"op": "'incr'", "key": "'n'", "repeat": "5", "expect": "5"}, "'repeat' needs a final-state expectation"),
    ({"op": "'incr'", "key": "'n'", "repeat": "0", "expect_final": "5"}, "'repeat' must be a whole number from 1 to 1000000 (got 0)"),
    ({"op": "'incr'", "key": "'n'", "repeat": "true", "expect_final": "5"}, "'repeat' must be a whole number"),
    ({"op": "'incr'", "key": "'n'", "repeat": "2.0", "expect_final": "5"}, "'repeat' must be a whole number"),
    ({"op": "'incr'", "key": "'n'", "expect_at_most": "'ten'"}, "'expect_at_most' must be a number (got \"ten\")"),
    ({"op": "'incr'", "key": "'n'", "expect_at_least": "true"}, "'expect_at_least' must be a number (got true)"),
    ({"op": "'incr'", "key": "'n'", "expect_at_most": "1", "expect_at_least": "2"}, "'expect_at_least' is above 'expect_at_most'"),
    ({"op": "'incr'", "key": "'n'", "expect": "1", "expect_final": "1"},
     "exactly one of expect, expect_one_of, expect_error, expect_together, or a final"),
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
    assert_one_line_about_the_step(tmp_path, fields, problem)


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
    shipped_names = r"\(shipped: coordination, counter, seed"
    with pytest.raises(ScenarioError, match=r"^nope: no such file, and no shipped scenario of that name " + shipped_names):
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


def test_coordination_steps_parse_with_their_fields(tmp_path: Path) -> None:
    text = "".join([
        step(op="'lock'", lock="'printer'", lease="2", timeout="10", kill="true", expect_within="3"),
        step(op="'unlock'", lock="'printer'", expect="true"),
        step(op="'wait'", key="'config'", after="'current'", timeout="0.5", expect="'v2'", with_next="true"),
        "[[steps]]\nactors = ['bob']\nop = 'store'\nkey = 'config'\nvalue = 'v2'\nexpect = 'saved'\n",
        step(op="'wait'", key="'config'", after="7", expect_error="'WaitTimeout'"),
        step(op="'qput'", queue="'jobs'", value="{n = 1}", expect="1"),
        step(op="'qget'", queue="'jobs'", until_empty="true", timeout="0", expect_together="[{n = 1}]"),
    ])
    scenario_file = load_scenario(scenario(tmp_path, text))
    lock, unlock, wait, _, waited, put, get = scenario_file.steps
    assert (lock.lock, lock.lease, lock.timeout, lock.kill, lock.within, lock.expect_kind) == ("printer", 2, 10, True, 3, "succeeds")
    assert lock.describe_expectation() == "acquired within 3s, then killed -9" and lock.subject == "lock printer"
    assert (unlock.lock, unlock.kill, unlock.name) == ("printer", False, "unlock printer")
    assert (wait.after, wait.timeout, wait.with_next, waited.after) == ("current", 0.5, True, 7)
    assert (put.queue, put.value, put.subject) == ("jobs", {"n": 1}, "queue jobs")
    assert (get.until_empty, get.timeout, get.expect_kind, get.expect) == (True, 0, "expect_together", [{"n": 1}])
    assert get.describe_expectation() == 'together, each once: {"n": 1}'
    assert [tuple(s.number for s in group) for group in scenario_file.groups()] == [(1,), (2,), (3, 4), (5,), (6,), (7,)]


@pytest.mark.parametrize(("fields", "problem"), [
    ({"op": "'lock'", "expect_within": "1"}, "lock needs 'lock', the lock's name (`name` is the step's own label)"),
    ({"op": "'lock'", "lock": "''", "expect_within": "1"}, "lock (its name) must be a non-empty str"),
    ({"op": "'lock'", "lock": "3", "expect_within": "1"}, "lock (its name) must be a non-empty str, not int"),
    ({"op": "'unlock'", "lock": "'l'", "kill": "true", "expect": "true"}, "'kill' does not apply to unlock"),
    ({"op": "'unlock'", "lock": "'l'", "lease": "2", "expect": "true"}, "'lease' does not apply to unlock"),
    ({"op": "'lock'", "lock": "'l'", "kill": "'yes'", "expect_within": "1"}, "'kill' must be true or false"),
    ({"op": "'lock'", "lock": "'l'", "lease": "0", "expect_within": "1"}, "a lease must be a number of seconds above 0"),
    ({"op": "'lock'", "lock": "'l'", "timeout": "-1", "expect_within": "1"}, "'timeout' must be a number of seconds from 0 to 300 (got -1"),
    ({"op": "'lock'", "lock": "'l'", "timeout": "1000", "expect_within": "1"}, "'timeout' must be a number of seconds from 0 to 300"),
    ({"op": "'lock'", "key": "'k'", "expect_within": "1"}, "'key' does not apply to lock"),
    ({"op": "'get'", "key": "'k'", "timeout": "1", "expect": "1"}, "'timeout' does not apply to get"),
    ({"op": "'wait'", "key": "'k'", "expect": "1"}, "wait needs 'after', a version or \"current\""),
    ({"op": "'wait'", "key": "'k'", "after": "'later'", "expect": "1"},
     "'after' must be a version (a whole number >= 0) or \"current\" (got \"later\")"),
    ({"op": "'wait'", "key": "'k'", "after": "-1", "expect": "1"}, "'after' must be a version"),
    ({"op": "'wait'", "key": "'k'", "after": "true", "expect": "1"}, "'after' must be a version"),
    ({"op": "'wait'", "after": "0", "expect": "1"}, "wait needs 'key'"),
    ({"op": "'qput'", "queue": "'q'", "expect": "1"}, "qput needs 'value'"),
    ({"op": "'qput'", "queue": "'q'", "value": "1979-05-27", "expect": "1"}, "value: date is not a value type"),
    ({"op": "'qput'", "queue": "'q'", "value": "1", "until_empty": "true", "expect": "1"}, "'until_empty' does not apply to qput"),
    ({"op": "'qget'", "expect": "1"}, "qget needs 'queue', the queue's name"),
    ({"op": "'qget'", "queue": "'q'", "expect_within": "0"}, "'expect_within' must be a number of seconds above 0 (got 0)"),
    ({"op": "'qget'", "queue": "'q'", "expect_within": "1", "expect_error": "'QueueEmpty'"}, "'expect_within' goes alone or with expect"),
    ({"op": "'qget'", "queue": "'q'", "expect_together": "[]"}, "'expect_together' must be a non-empty list"),
    ({"op": "'qget'", "queue": "'q'", "expect_together": "['a']", "expect": "'a'"},
     "give exactly one of expect, expect_one_of, expect_error, expect_together"),
    ({"op": "'qget'", "queue": "'q'", "expect_together": "['a']", "same_result": "true"},
     "'same_result' goes with expect or expect_one_of, not with expect_together"),
    ({"op": "'qget'", "queue": "'q'", "with_next": "1", "expect": "'a'"}, "'with_next' must be true or false"),
])
def test_malformed_coordination_steps_are_one_line_naming_the_step(tmp_path: Path, fields: dict[str, str], problem: str) -> None:
    assert_one_line_about_the_step(tmp_path, fields, problem)


@pytest.mark.parametrize(("text", "problem"), [
    (step(name="'last'", op="'size'", expect="0", with_next="true"), "step 1 (last): 'with_next' on the last step"),
    (step(name="'first'", op="'size'", expect="0", with_next="true") + step(op="'size'", expect="0"),
     "step 1 (first): 'with_next' runs it with step 2 at one moment, but alice is in both: an actor does one thing at a time"),
    (step(name="'first'", op="'size'", expect="0", with_next="true") + "[[steps]]\nactors = ['bob']\nop = 'quit'\nexpect = 'x'\n",
     "step 1 (first): 'with_next' joins it to step 2, a quit, which runs alone"),
    (step(name="'first'", op="'size'", expect="0", with_next="true")
     + "[[steps]]\nactors = ['bob']\nop = 'incr'\nkey = 'n'\nrepeat = 2\nexpect_final = 2\n",
     "step 1 (first): 'with_next' joins it to step 2, a step with a final-state expectation, which runs alone"),
])
def test_with_next_needs_a_next_step_for_other_actors(tmp_path: Path, text: str, problem: str) -> None:
    path = scenario(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: {problem}"), str(caught.value)


def test_coordination_scenario_is_as_the_issue_describes() -> None:
    shipped = load_scenario(shipped_scenarios()["coordination"])
    killed, taken, released = shipped.steps[:3]
    assert (killed.op, killed.actors, killed.kill) == ("lock", ("alice",), True)
    assert (taken.op, taken.actors, taken.lock) == ("lock", ("bob",), killed.lock)
    assert killed.lease is not None and taken.within is not None and taken.within >= killed.lease, "bob may wait out the lease (Redis)"
    assert taken.timeout is not None and taken.timeout > taken.within and released.op == "unlock"
    [(wait, store)] = [group for group in shipped.groups() if len(group) > 1]
    assert (wait.op, wait.actors, wait.after) == ("wait", ("bob",), "current")
    assert (store.op, store.actors, store.key) == ("store", ("alice",), wait.key)
    assert wait.expect == store.value
    puts = [s for s in shipped.steps if s.op == "qput"]
    [get_all] = [s for s in shipped.steps if s.until_empty]
    assert [s.value for s in puts] == ["job-1", "job-2", "job-3"] and get_all.actors == ("alice", "bob")
    assert sorted(get_all.expect) == ["job-1", "job-2", "job-3"] and get_all.expect_kind == "expect_together"
