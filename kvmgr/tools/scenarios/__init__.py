"""Scenario files: TOML steps that actors run against a server, their loader and validation.

A scenario is a list of [[steps]]. Each step names its actors (one, or several that fire at the same
moment), the operation, its arguments, and one expectation: `expect` (an exact result), `expect_one_of`
(a list of acceptable results) or `expect_error` (the name of a kvmgr error, e.g. "KeyNotFound").
`same_result = true` also requires every actor of the step to get the same result. In `value`,
`{actor}` is replaced by the actor's name. Results are compared with their types (true is not 1, 1 is not
1.0) and shown in JSON notation. Actor names are plain identifiers; a `quit` step can only be the last.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kvmgr.errors import ERROR_CLASSES, ScenarioError
from kvmgr.protocol.operations import BY_NAME, SCENARIO_OPERATIONS

EXPECTATIONS = ("expect", "expect_one_of", "expect_error")
STEP_FIELDS = {
    "name", "actors", "op", "key", "value", "expected", "absent", "keys", "pairs", "same_result", *EXPECTATIONS,
}
ERROR_NAMES = set(ERROR_CLASSES)
MAX_SCENARIO_BYTES = 1024 * 1024
MAX_ACTOR_NAME = 64
ACTOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def notation(value: Any) -> str:
    """A value as the results table and the JSON report show it: JSON ("saved", true, 1, null)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def same_value(expected: Any, actual: Any) -> bool:
    """Equal with types, all the way down: true is not 1, 1 is not 1.0, "1" is not 1."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(same_value(expected[k], actual[k]) for k in expected)
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(map(same_value, expected, actual))
    return type(expected) is type(actual) and expected == actual


@dataclass(frozen=True)
class Step:
    """One step: its actors run `op` together (at one barrier when there are several)."""

    number: int
    name: str
    actors: tuple[str, ...]
    op: str
    key: str | None = None
    value: str | None = None
    expected: str | None = None
    absent: bool = False
    keys: tuple[str, ...] | None = None
    pairs: dict[str, str] | None = None
    expect_kind: str = "expect"
    expect: Any = None
    same_result: bool = False

    def value_for(self, actor: str) -> str | None:
        """The step's value with {actor} replaced."""
        return None if self.value is None else self.value.replace("{actor}", actor)

    def accepts(self, result: Any) -> bool:
        """True if a successful result meets the expectation."""
        if self.expect_kind == "expect":
            return same_value(self.expect, result)
        if self.expect_kind == "expect_one_of":
            return any(same_value(choice, result) for choice in self.expect)
        return False

    def describe_expectation(self) -> str:
        """The expectation as a table cell (values in JSON notation, like the actual results)."""
        if self.expect_kind == "expect_error":
            return f"error {self.expect}"
        if self.expect_kind == "expect_one_of":
            return "one of " + ", ".join(map(notation, self.expect)) + (" (same for all)" if self.same_result else "")
        return notation(self.expect)


@dataclass(frozen=True)
class Scenario:
    """A named list of steps read from a file."""

    name: str
    path: str
    steps: tuple[Step, ...]
    description: str = ""
    actors: tuple[str, ...] = field(default=())


def seed_scenario_path() -> Path:
    """The shipped seed scenario (the homework's test cases)."""
    return Path(str(resources.files(__package__).joinpath("seed.toml")))


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
    if op not in SCENARIO_OPERATIONS:
        raise problem(f"'op' must be one of {', '.join(SCENARIO_OPERATIONS)} (got {op!r})")
    actors = raw.get("actors")
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
    _check_arguments(op, raw, problem)
    kind, expect = _expectation(raw, problem)
    return Step(
        number=number, name=str(label or f"{op} {raw.get('key', '')}".strip()), actors=tuple(actors), op=op,
        key=raw.get("key"), value=raw.get("value"), expected=raw.get("expected"), absent=bool(raw.get("absent", False)),
        keys=tuple(raw["keys"]) if "keys" in raw else None, pairs=raw.get("pairs"),
        expect_kind=kind, expect=expect, same_result=bool(raw.get("same_result", False)),
    )


def _check_arguments(op: str, raw: dict, problem: Any) -> None:
    for name in ("key", "value", "expected"):
        if name in raw and not isinstance(raw[name], str):
            raise problem(f"'{name}' must be a string")
    if BY_NAME[op].needs_key and "key" not in raw:
        raise problem(f"{op} needs 'key'")
    if BY_NAME[op].needs_value and "value" not in raw:
        raise problem(f"{op} needs 'value'")
    if op == "cas" and ("expected" in raw) == bool(raw.get("absent")):
        raise problem("cas needs exactly one of 'expected' or 'absent = true'")
    if op == "get_many" and not (isinstance(raw.get("keys"), list) and all(isinstance(k, str) for k in raw["keys"])):
        raise problem("get_many needs 'keys', a list of strings")
    if op == "store_many" and not isinstance(raw.get("pairs"), dict):
        raise problem("store_many needs 'pairs', a table of key = value")
    for name in ("same_result", "absent"):
        if name in raw and not isinstance(raw[name], bool):
            raise problem(f"'{name}' must be true or false")


def _expectation(raw: dict, problem: Any) -> tuple[str, Any]:
    given = [name for name in EXPECTATIONS if name in raw]
    if len(given) != 1:
        raise problem("give exactly one of expect, expect_one_of, expect_error")
    kind = given[0]
    value = raw[kind]
    if kind == "expect_one_of" and (not isinstance(value, list) or not value):
        raise problem("'expect_one_of' must be a non-empty list")
    if kind == "expect_error" and (not isinstance(value, str) or value not in ERROR_NAMES):
        raise problem(f"'expect_error' must name a kvmgr error such as KeyNotFound or InvalidKey (got {value!r})")
    return kind, value
