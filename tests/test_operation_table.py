"""The operation table is the one declaration: every backend implements every operation with its parameters."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest

from kvmgr.client.manager import Client
from kvmgr.client.operations import Operations
from kvmgr.client.recording import RecordingClient
from kvmgr.client.redis_transport import RedisClient
from kvmgr.protocol import wire
from kvmgr.protocol.operations import OPERATIONS, OpSpec
from kvmgr.server.store import Store


def parameters(function: Callable, skip: int) -> tuple[list[str], int]:
    """The parameter names after the first `skip` (self, and the connection for Redis) and how many have defaults."""
    params = list(inspect.signature(function).parameters.values())[skip:]
    params = [param for param in params if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    return [param.name for param in params], sum(param.default is not inspect.Parameter.empty for param in params)


@pytest.mark.parametrize("spec", OPERATIONS, ids=lambda spec: spec.name)
@pytest.mark.parametrize("backend, skip", [(Store, 1), (RedisClient, 2), (Operations, 1)], ids=["store", "redis", "client-api"])
def test_every_backend_implements_the_operation_with_its_parameters(spec: OpSpec, backend: type, skip: int) -> None:
    name = f"_do_{spec.name}" if backend is RedisClient else spec.name
    assert hasattr(backend, name), f"{backend.__name__} lacks {name}"
    extra = spec.client_params if backend is Operations else ()  # handled by the client, never sent
    assert parameters(getattr(backend, name), skip) == ([*spec.params, *extra], spec.optional + len(extra))


@pytest.mark.parametrize("spec", [spec for spec in OPERATIONS if spec.optional], ids=lambda spec: spec.name)
def test_the_client_and_the_store_default_optional_parameters_as_the_table_says(spec: OpSpec) -> None:
    for function in (getattr(Operations, spec.name), getattr(Store, spec.name)):
        params = list(inspect.signature(function).parameters.values())[1:len(spec.params) + 1]
        assert tuple(param.default for param in params[spec.least_args:]) == spec.optional_defaults


def test_the_abstract_client_leaves_transports_one_attempt_and_close() -> None:
    assert inspect.isabstract(Operations)
    assert Operations.__abstractmethods__ == {"_call", "close"}
    assert inspect.signature(Operations.__enter__).return_annotation == "Self"


@pytest.mark.parametrize("client", [Client, RedisClient, RecordingClient])
def test_every_client_is_a_complete_operations_with_the_table_methods_defined_once(client: type) -> None:
    assert issubclass(client, Operations) and not inspect.isabstract(client)
    redefined = [spec.name for spec in OPERATIONS if getattr(client, spec.name) is not getattr(Operations, spec.name)]
    assert not redefined, f"{client.__name__} redefines typed public methods: {redefined}"


def test_the_wire_exposes_exactly_the_table() -> None:
    assert set(wire.EXPOSED) == {spec.name for spec in OPERATIONS}


def markdown_row(spec: OpSpec) -> str:
    """The README row of one operation."""
    required, optional = spec.params[: spec.least_args], spec.params[spec.least_args:]
    defaults = [f"{name}={default!r}" for name, default in zip(optional, spec.optional_defaults, strict=True)]
    signature = ", ".join([*required, *defaults, *(f"{name}=..." for name in spec.client_params)])
    cells = [f"`{spec.name}({signature})`", spec.summary, "yes" if spec.mutates else "no", "yes" if spec.safe_to_repeat else "no",
             spec.recorded_as or "—"]
    return "| " + " | ".join(cells) + " |"


def test_the_readme_table_of_operations_is_the_operation_table() -> None:
    from .test_readme import README

    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- operations-table:")
    rows = [line for line in text[start:].splitlines()[1:] if line.startswith("| `")]
    rows = rows[: len(OPERATIONS)]
    assert rows == [markdown_row(spec) for spec in OPERATIONS]
