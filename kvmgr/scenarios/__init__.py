"""Scenario files: TOML steps that actors run against a server, their loader and validation.

A scenario is a list of [[steps]]. Each step names its actors (one, or several that fire at the same
moment), the operation, its arguments, and one expectation: `expect` (an exact result), `expect_one_of`
(a list of acceptable results) or `expect_error` (the name of a kvmgr error, e.g. "KeyNotFound").
`same_result = true` also requires every actor of the step to get the same result. In `value`,
`{actor}` is replaced by the actor's name.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kvmgr.errors import ERROR_CLASSES, ScenarioError
from kvmgr.wire import OPERATIONS

NEEDS_KEY = ("store", "get", "delete", "exists", "cas")
NEEDS_VALUE = ("store", "cas")
EXPECTATIONS = ("expect", "expect_one_of", "expect_error")
STEP_FIELDS = {
    "name", "actors", "op", "key", "value", "expected", "absent", "keys", "pairs", "same_result", *EXPECTATIONS,
}
ERROR_NAMES = set(ERROR_CLASSES)


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
            return result == self.expect
        if self.expect_kind == "expect_one_of":
            return result in self.expect
        return False

    def describe_expectation(self) -> str:
        """The expectation as a table cell."""
        if self.expect_kind == "expect_error":
            return f"error {self.expect}"
        if self.expect_kind == "expect_one_of":
            return "one of " + ", ".join(map(str, self.expect)) + (" (same for all)" if self.same_result else "")
        return str(self.expect)


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
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(document) - {"name", "description", "steps"}
    if unknown:
        raise ScenarioError(f"{path}: unknown top-level field(s): {', '.join(sorted(unknown))}")
    raw_steps = document.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ScenarioError(f"{path}: no [[steps]]: a scenario needs at least one step")
    steps = tuple(_parse_step(path, number, raw) for number, raw in enumerate(raw_steps, start=1))
    actors = tuple(dict.fromkeys(actor for step in steps for actor in step.actors))
    name = document.get("name", path.stem)
    return Scenario(str(name), str(path), steps, str(document.get("description", "")), actors)


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
    if op not in OPERATIONS:
        raise problem(f"'op' must be one of {', '.join(OPERATIONS)} (got {op!r})")
    actors = raw.get("actors")
    if not isinstance(actors, list) or not actors or not all(isinstance(a, str) and a for a in actors):
        raise problem("'actors' must be a non-empty list of names")
    if len(set(actors)) != len(actors):
        raise problem("'actors' names an actor twice")
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
    if op in NEEDS_KEY and "key" not in raw:
        raise problem(f"{op} needs 'key'")
    if op in NEEDS_VALUE and "value" not in raw:
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
    if kind == "expect_error" and value not in ERROR_NAMES:
        raise problem(f"'expect_error' must name a kvmgr error such as KeyNotFound or InvalidKey (got {value!r})")
    return kind, value
