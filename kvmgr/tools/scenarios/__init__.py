"""Scenario files: TOML steps that actors run against a server, their loader and validation.

A scenario is a list of [[steps]]. Each step names its actors (one, or several that fire at the same
moment), the operation, its arguments, and what to expect, either of each call's result or of the key's
final state:
- of the result, exactly one of `expect` (an exact result), `expect_one_of` (a list of acceptable results)
  or `expect_error` (the name of a kvmgr error, e.g. "KeyNotFound"); `same_result = true` also requires
  every actor of the step to get the same result;
- of the final state, read once after every actor has finished, one or more of `expect_final` (the exact
  value), `expect_at_most` and `expect_at_least` (bounds on a number). A step with `repeat = N` (each actor
  runs its operation N times, over its one connection) must expect a final state.
Arguments: `key`, `value` and cas's `expected` (any TOML value that is a kvmgr value; in every str of a
`value`, `{actor}` is replaced by the actor's name), `absent = true` (cas), `keys` (get_many), `pairs` (store_many),
`by` (incr, decr), `ttl` (store, add, expire); a field the operation does not take is refused. Besides the
store's operations, `unsafe_increment` is a get and then a store of the value plus one (an absent key counts
as 0): what `d[k] += 1` does on a Manager dict. Results are compared with their types (true is not 1, 1 is
not 1.0) and shown in JSON notation. Actor names are plain identifiers; a `quit` step can only be the last.

Coordination steps: `lock` (`lock` = its name, `lease`, `timeout`, and `kill = true`: the driver kills the actor
with SIGKILL once it holds the lock, and starts it again for its later steps) and `unlock` (`lock`); the actor
holds a lock from its lock step to its unlock step. `wait` (`key`, `after` = a version or "current": the version
the actor reads at the start of the step, before any barrier; `timeout`); `qput` (`queue`, `value`) and `qget`
(`queue`, `timeout`, `until_empty = true`: get until no item comes within the timeout; the result is the list
taken). Two more expectations: `expect_within = SECONDS` (the call succeeded and took at most that long; alone,
or with expect/expect_one_of) and `expect_together` (a list: what all the step's actors got, every call's result
pooled, is exactly these items, each once, in any order). `with_next = true` runs a step at the same moment as
the next one: the actors of both meet at one barrier (an actor may be in only one of them).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

from kvmgr.config import BLOCKING_CEILING
from kvmgr.errors import ERROR_CLASSES, InvalidKey, InvalidValue, ScenarioError
from kvmgr.protocol.operations import BY_NAME
from kvmgr.protocol.validation import check_delta, check_lease, check_mapping, check_name, check_ttl, check_value
from kvmgr.protocol.values import Number, is_number, same_value
from kvmgr.tools.actor import ACTOR_OPERATIONS, CURRENT, OPTIONAL_PARAMETERS, PSEUDO_OPERATIONS

STEP_OPERATIONS = ACTOR_OPERATIONS
EXPECTATIONS = ("expect", "expect_one_of", "expect_error", "expect_together")
FINAL_EXPECTATIONS = ("expect_final", "expect_at_most", "expect_at_least")
ARGUMENT_FIELDS = {
    "key": "key", "value": "value", "expected": "expected", "absent": "expected", "keys": "keys", "pairs": "mapping",
    "by": "by", "ttl": "ttl", "lock": "lock", "lease": "lease", "timeout": "timeout", "kill": "kill", "after": "after",
    "queue": "queue", "until_empty": "until_empty",
}
"""Each argument field of a step and the operation parameter it gives (a field is refused where the operation has none)."""
STEP_FIELDS = {
    "name", "actors", "op", "same_result", "repeat", "with_next", "expect_within", *ARGUMENT_FIELDS, *EXPECTATIONS,
    *FINAL_EXPECTATIONS,
}
FLAGS = ("same_result", "absent", "kill", "until_empty", "with_next")
"""The step fields that are true or false."""
ERROR_NAMES = set(ERROR_CLASSES)
MAX_SCENARIO_BYTES = 1024 * 1024
MAX_ACTOR_NAME = 64
MAX_REPEAT = 1_000_000
ACTOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
Problem = Callable[[str], ScenarioError]


def notation(value: Any) -> str:
    """A value as the results table and the JSON report show it: JSON ("saved", true, 1, null)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def operation_parameters(op: str) -> tuple[str, ...]:
    """The parameters of a step's operation (a store operation's, or a pseudo-operation's)."""
    return PSEUDO_OPERATIONS[op] if op in PSEUDO_OPERATIONS else BY_NAME[op].params


def required_parameters(op: str) -> tuple[str, ...]:
    """The parameters a step of op must give (cas's expected aside: `expected` or `absent`)."""
    if op in PSEUDO_OPERATIONS:
        return tuple(name for name in PSEUDO_OPERATIONS[op] if name not in OPTIONAL_PARAMETERS)
    spec = BY_NAME[op]
    return tuple(name for name in spec.params[:spec.least_args] if name != "expected")


@dataclass(frozen=True, kw_only=True)
class FinalState:
    """What the key must hold once a step is over: an exact value, and/or bounds on a number (all must hold)."""

    value: Any = None  # None: any value (None is never a value)
    at_most: Number | None = None
    at_least: Number | None = None

    def accepts(self, final: Any) -> bool:
        """True if the key's final value (None: the key is absent) meets every expectation."""
        if final is None:
            return False
        if self.value is not None and not same_value(self.value, final):
            return False
        if self.at_most is None and self.at_least is None:
            return True
        return is_number(final) and (self.at_most is None or final <= self.at_most) and (
            self.at_least is None or final >= self.at_least
        )

    def describe(self) -> str:
        """The expectation as a table cell: `final 1000`, `final at most 1000`, `final from 1 to 10`."""
        parts = [] if self.value is None else [notation(self.value)]
        if self.at_least is not None and self.at_most is not None:
            parts.append(f"from {notation(self.at_least)} to {notation(self.at_most)}")
        elif self.at_most is not None:
            parts.append(f"at most {notation(self.at_most)}")
        elif self.at_least is not None:
            parts.append(f"at least {notation(self.at_least)}")
        return "final " + ", ".join(parts)


@dataclass(frozen=True)
class Step:
    """One step: its actors run `op` together (at one barrier when there are several), `repeat` times each if given."""

    number: int
    name: str
    actors: tuple[str, ...]
    op: str
    key: str | None = None
    value: Any = None
    expected: Any = None
    absent: bool = False
    keys: tuple[str, ...] | None = None
    pairs: dict[str, Any] | None = None
    expect_kind: str = "expect"  # expect, expect_one_of, expect_error or final
    expect: Any = None
    same_result: bool = False
    by: Number | None = None
    ttl: Number | None = None
    repeat: int | None = None
    final: FinalState | None = None
    lock: str | None = None
    queue: str | None = None
    lease: Number | None = None
    timeout: Number | None = None
    kill: bool = False
    after: int | str | None = None  # a version, or "current"
    until_empty: bool = False
    within: Number | None = None  # expect_within: the call succeeded and took at most this many seconds
    with_next: bool = False

    @property
    def calls(self) -> int:
        """How many times each actor runs the operation."""
        return self.repeat or 1

    def value_for(self, actor: str) -> Any:
        """The step's value, {actor} replaced in every str in it."""
        return _with_actor(self.value, actor)

    def accepts(self, result: Any) -> bool:
        """True if a successful result meets the (per-call) expectation."""
        if self.expect_kind == "expect":
            return same_value(self.expect, result)
        if self.expect_kind == "expect_one_of":
            return any(same_value(choice, result) for choice in self.expect)
        return self.expect_kind == "succeeds"

    @property
    def subject(self) -> str:
        """What the step acts on, as the key cell shows it: the key, `lock NAME` or `queue NAME`."""
        if self.lock is not None:
            return f"lock {self.lock}"
        if self.queue is not None:
            return f"queue {self.queue}"
        return self.key or ""

    def describe_expectation(self) -> str:
        """The expectation as a table cell (values in JSON notation, like the actual results)."""
        text = self._describe_result()
        if self.within is not None:
            text = (text + " " if text else "acquired " if self.op == "lock" else "ok ") + f"within {self.within:g}s"
        return text + (", then killed -9" if self.kill else "")

    def _describe_result(self) -> str:
        if self.final is not None:
            return self.final.describe()
        if self.expect_kind == "expect_error":
            return f"error {self.expect}"
        if self.expect_kind == "expect_one_of":
            return "one of " + ", ".join(map(notation, self.expect)) + (" (same for all)" if self.same_result else "")
        if self.expect_kind == "expect_together":
            return "together, each once: " + ", ".join(map(notation, self.expect))
        if self.expect_kind == "succeeds":
            return ""
        return notation(self.expect)


def _with_actor(value: Any, actor: str) -> Any:
    if isinstance(value, str):
        return value.replace("{actor}", actor)
    if isinstance(value, list | tuple):
        return type(value)(_with_actor(item, actor) for item in value)
    if isinstance(value, dict):
        return {key: _with_actor(item, actor) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Scenario:
    """A named list of steps read from a file."""

    name: str
    path: str
    steps: tuple[Step, ...]
    description: str = ""
    actors: tuple[str, ...] = field(default=())

    def groups(self) -> list[tuple[Step, ...]]:
        """The steps in the order they run, those joined by `with_next` in one group (run at one moment)."""
        groups: list[tuple[Step, ...]] = []
        for step in self.steps:
            if groups and groups[-1][-1].with_next:
                groups[-1] = (*groups[-1], step)
            else:
                groups.append((step,))
        return groups


def shipped_scenarios() -> dict[str, Path]:
    """The scenarios shipped in this package, by name (the file's stem): seed, counter, ..."""
    files = resources.files(__package__)
    return {Path(item.name).stem: Path(str(item)) for item in sorted(files.iterdir(), key=lambda i: i.name)
            if item.name.endswith(".toml")}


def find_scenario(name: str) -> Path:
    """A scenario file: `name` as a path if it exists or looks like one (a / or a suffix), else the shipped scenario `name`."""
    path = Path(name)
    if path.exists() or path.suffix or len(path.parts) != 1:
        return path
    shipped = shipped_scenarios()
    if name in shipped:
        return shipped[name]
    raise ScenarioError(f"{name}: no such file, and no shipped scenario of that name (shipped: {', '.join(shipped)})")


def seed_scenario_path() -> Path:
    """The shipped seed scenario (the homework's test cases)."""
    return shipped_scenarios()["seed"]


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raise ScenarioError naming the file, the step and the problem."""
    path = Path(path)
    try:
        document = tomllib.loads(_read_text(path))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(document) - {"name", "description", "steps"}
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level field(s): {', '.join(sorted(unknown))}")
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{path}: no [[steps]]: a scenario needs at least one step")
    steps = tuple(_parse_step(path, number, raw) for number, raw in enumerate(raw_steps, start=1))
    _check_quit_is_last(path, steps)
    _check_groups(path, steps)
    actors = tuple(dict.fromkeys(actor for step in steps for actor in step.actors))
    name = document.get("name", path.stem)
    return Scenario(str(name), str(path), steps, str(document.get("description", "")), actors)


def _read_text(path: Path) -> str:
    """The file's text, read no further than MAX_SCENARIO_BYTES (so /dev/zero is refused, not read forever)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror}") from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{path}: larger than {MAX_SCENARIO_BYTES // 1024 // 1024} MiB: not a scenario file")
    return data.decode("utf-8")


def _check_quit_is_last(path: Path, steps: tuple[Step, ...]) -> None:
    """A step after a quit could never run (the server is gone): refuse the scenario instead of dropping it."""
    quits = [step.number for step in steps if step.op == "quit"]
    if quits and quits[0] != len(steps):
        after = steps[quits[0]]
        raise ScenarioError(
            f"{path}: step {after.number} ({after.name}): comes after the quit of step {quits[0]}, "
            "when the server is gone: make quit the last step"
        )


def _check_groups(path: Path, steps: tuple[Step, ...]) -> None:
    """Steps joined by with_next run at one moment: there must be a next step, not a quit, and no actor in two of them."""
    for step, after in zip(steps, (*steps[1:], None), strict=True):
        if not step.with_next:
            continue
        where = f"{path}: step {step.number} ({step.name})"
        if after is None:
            raise ScenarioError(f"{where}: 'with_next' on the last step: there is no next step to run with")
        if after.op == "quit" or after.final is not None:
            why = "a quit" if after.op == "quit" else "a step with a final-state expectation"
            raise ScenarioError(f"{where}: 'with_next' joins it to step {after.number}, {why}, which runs alone")
        shared = set(step.actors) & set(after.actors)
        if shared:
            raise ScenarioError(
                f"{where}: 'with_next' runs it with step {after.number} at one moment, but {', '.join(sorted(shared))} "
                "is in both: an actor does one thing at a time"
            )


def _parse_step(path: Path, number: int, raw: Any) -> Step:
    label = raw.get("name", "") if isinstance(raw, dict) else ""

    def problem(text: str) -> ScenarioError:
        where = f"step {number}" + (f" ({label})" if label else "")
        return ScenarioError(f"{path}: {where}: {text}")

    if not isinstance(raw, dict):
        raise problem("a step must be a table")
    unknown = set(raw) - STEP_FIELDS
    if unknown:
        raise problem(f"unknown field(s): {', '.join(sorted(unknown))}")
    op = raw.get("op")
    if op not in STEP_OPERATIONS:
        raise problem(f"'op' must be one of {', '.join(STEP_OPERATIONS)} (got {op!r})")
    actors = _actors(raw.get("actors"), problem)
    arguments = _arguments(op, raw, problem)
    kind, expect, final = _expectation(op, raw, problem)
    subject = raw.get("key", raw.get("lock", raw.get("queue", "")))
    return Step(
        number=number, name=str(label or f"{op} {subject}".strip()), actors=actors, op=op,
        keys=tuple(raw["keys"]) if "keys" in raw else None, expect_kind=kind, expect=expect,
        same_result=bool(raw.get("same_result", False)), repeat=_repeat(raw, final, problem), final=final,
        within=_within(raw, kind, problem), with_next=bool(raw.get("with_next", False)), **arguments,
    )


def _actors(actors: Any, problem: Problem) -> tuple[str, ...]:
    if not isinstance(actors, list) or not actors or not all(isinstance(a, str) and a for a in actors):
        raise problem("'actors' must be a non-empty list of names")
    if len(set(actors)) != len(actors):
        raise problem("'actors' names an actor twice")
    for actor in actors:
        if not ACTOR_NAME.fullmatch(actor) or len(actor) > MAX_ACTOR_NAME:
            raise problem(
                f"actor name {actor[:80]!r} is not a plain name: a letter or _, then letters, digits, _ or -, "
                f"at most {MAX_ACTOR_NAME} characters"
            )
    return tuple(actors)


def _arguments(op: str, raw: dict, problem: Problem) -> dict[str, Any]:
    """The step's arguments checked against op's parameters and the value rules, as Step fields."""
    parameters = operation_parameters(op)
    for name, parameter in ARGUMENT_FIELDS.items():
        if name in raw and parameter not in parameters:
            raise problem(f"'{name}' does not apply to {op}")
    for parameter in required_parameters(op):
        name = "pairs" if parameter == "mapping" else parameter
        if name not in raw:
            raise problem(f"{op} needs '{name}'" + _FIELD_HINTS.get(name, ""))
    if op == "cas" and ("expected" in raw) == bool(raw.get("absent")):
        raise problem("cas needs exactly one of 'expected' or 'absent = true'")
    for name in FLAGS:
        if name in raw and not isinstance(raw[name], bool):
            raise problem(f"'{name}' must be true or false")
    try:
        return {**_checked_arguments(raw, problem), **_coordination_arguments(raw, problem)}
    except (InvalidKey, InvalidValue) as exc:
        raise problem(str(exc)) from None


_FIELD_HINTS = {
    "keys": ", a list of strings", "pairs": ", a table of key = value",
    "lock": ", the lock's name (`name` is the step's own label)", "queue": ", the queue's name (`name` is the step's own label)",
    "after": ', a version or "current"',
}


def _checked_arguments(raw: dict, problem: Problem) -> dict[str, Any]:
    if "key" in raw and not (isinstance(raw["key"], str) and raw["key"]):
        raise problem("'key' must be a non-empty string")
    if "keys" in raw and not (isinstance(raw["keys"], list) and all(isinstance(k, str) for k in raw["keys"])):
        raise problem("get_many needs 'keys', a list of strings")
    if "pairs" in raw and not isinstance(raw["pairs"], dict):
        raise problem("store_many needs 'pairs', a table of key = value")
    return {
        "key": raw.get("key"),
        "value": check_value(raw["value"]) if "value" in raw else None,
        "expected": _check_expected(raw["expected"]) if "expected" in raw else None,
        "absent": bool(raw.get("absent", False)),
        "pairs": check_mapping(raw["pairs"]) if "pairs" in raw else None,
        "by": check_delta(raw["by"]) if "by" in raw else None,
        "ttl": raw["ttl"] if "ttl" in raw and check_ttl(raw["ttl"]) else None,  # as written (60 stays 60)
    }


def _coordination_arguments(raw: dict, problem: Problem) -> dict[str, Any]:
    """The lock, queue, lease, timeout, after, kill and until_empty fields, checked, as Step fields."""
    timeout = raw.get("timeout")
    if timeout is not None and (not is_number(timeout) or not 0 <= timeout <= BLOCKING_CEILING):
        raise problem(f"'timeout' must be a number of seconds from 0 to {BLOCKING_CEILING:g} (got {notation(timeout)})")
    after = raw.get("after")
    if after is not None and after != CURRENT and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
        raise problem(f"'after' must be a version (a whole number >= 0) or \"{CURRENT}\" (got {notation(after)})")
    return {
        "lock": check_name(raw["lock"], "lock (its name)") if "lock" in raw else None,
        "queue": check_name(raw["queue"], "queue (its name)") if "queue" in raw else None,
        "lease": raw["lease"] if "lease" in raw and check_lease(raw["lease"]) else None,  # as written (2 stays 2)
        "timeout": timeout, "after": after, "kill": raw.get("kill", False), "until_empty": raw.get("until_empty", False),
    }


def _within(raw: dict, kind: str, problem: Problem) -> Number | None:
    """expect_within: a number of seconds above 0, alone or with expect or expect_one_of."""
    if "expect_within" not in raw:
        return None
    within = raw["expect_within"]
    if not is_number(within) or not within > 0:
        raise problem(f"'expect_within' must be a number of seconds above 0 (got {notation(within)})")
    if kind not in ("expect", "expect_one_of", "succeeds"):
        raise problem("'expect_within' goes alone or with expect or expect_one_of (it bounds how long a call that succeeds takes)")
    return cast("Number", within)


def _check_expected(expected: Any) -> Any:
    try:
        return check_value(expected)
    except InvalidValue as exc:
        raise InvalidValue(f"expected {exc}") from None


def _repeat(raw: dict, final: FinalState | None, problem: Problem) -> int | None:
    if "repeat" not in raw:
        return None
    repeat = raw["repeat"]
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
        raise problem(f"'repeat' must be a whole number from 1 to {MAX_REPEAT} (got {notation(repeat)})")
    if final is None:
        raise problem(
            "'repeat' needs a final-state expectation (expect_final, expect_at_most or expect_at_least): "
            "the results of repeated calls are not compared one by one"
        )
    return repeat


def _expectation(op: str, raw: dict, problem: Problem) -> tuple[str, Any, FinalState | None]:
    """The kind and value of the per-call expectation, or ("final", None, the final-state expectation)."""
    given = [name for name in EXPECTATIONS if name in raw]
    finals = [name for name in FINAL_EXPECTATIONS if name in raw]
    if not given and not finals and "expect_within" in raw:
        return "succeeds", None, None
    if len(given) + bool(finals) != 1:
        raise problem(
            "give exactly one of expect, expect_one_of, expect_error, expect_together, or a final state "
            "(expect_final, expect_at_most, expect_at_least)"
        )
    if finals:
        return "final", None, _final_state(op, raw, problem)
    kind = given[0]
    value = raw[kind]
    if kind in ("expect_one_of", "expect_together") and (not isinstance(value, list) or not value):
        raise problem(f"'{kind}' must be a non-empty list")
    if kind == "expect_together" and "same_result" in raw:
        raise problem("'same_result' goes with expect or expect_one_of, not with expect_together")
    if kind == "expect_error" and (not isinstance(value, str) or value not in ERROR_NAMES):
        raise problem(f"'expect_error' must name a kvmgr error such as KeyNotFound or InvalidKey (got {value!r})")
    return kind, value, None


def _final_state(op: str, raw: dict, problem: Problem) -> FinalState:
    if "key" not in operation_parameters(op):
        raise problem(f"a final-state expectation needs an operation on one key ({op} has none)")
    if "same_result" in raw:
        raise problem("'same_result' goes with expect or expect_one_of, not with a final state")
    bounds = {name: raw.get(f"expect_{name}") for name in ("at_most", "at_least")}
    for name, bound in bounds.items():
        if bound is not None and not is_number(bound):
            raise problem(f"'expect_{name}' must be a number (got {notation(bound)})")
    if None not in bounds.values() and bounds["at_least"] > bounds["at_most"]:  # type: ignore[operator]
        raise problem("'expect_at_least' is above 'expect_at_most': no value can meet both")
    try:
        value = check_value(raw["expect_final"]) if "expect_final" in raw else None
    except InvalidValue as exc:
        raise problem(f"expect_final: {exc}") from None
    return FinalState(value=value, **bounds)
