"""Values: what kvmgr stores, the one rule of equality, and the two encodings every backend and tool shares.

A value is plain data: `str`, `bytes`, `int`, `float` (finite), `bool`, and `list`, `tuple` and `dict` (str
keys) of these, nested at most MAX_DEPTH deep. `None` is not a value: it means "absent" (to `cas`, in histories).
Each value comes back exactly as it was stored, with its types: a tuple stays a tuple, 1 stays an int, True a bool.

Equality is strict (`same_value`): two values are the same only if they have the same types all the way down,
so 1, 1.0 and True are three different values (Python's == calls them equal), and so are "x" and b"x". A dict's
order does not count. `cas` compares with this rule on every backend.

The JSON form (`to_json`, `from_json`) is how histories and dump files write a value, and the core of the byte
form: JSON-native data stays plain JSON (str, int, float, bool, list, dict), so other tools can write it too;
bytes become {"$bytes": "<hex>"} and tuples {"$tuple": [...]}. A JSON object with exactly one member whose name
starts with "$" is always a tag, so a stored dict that looks like one is written {"$dict": {...}}.

The byte form (`encode`, `decode`) is how a value is kept outside Python (in Redis, in the durable journal): one
tag byte, then the body. b"s" + UTF-8 for a str, b"b" + the bytes, b"f" + repr() for a float, b"j" + the JSON
form for a bool, list, tuple or dict, and an int as its plain decimal digits (no tag: Redis's INCRBY reads and
writes that form). Decoding never runs code. The size limit applies to this encoded form (less its tag byte).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Union

Value = Union[str, bytes, int, float, bool, list["Value"], tuple["Value", ...], dict[str, "Value"]]  # noqa: UP007 - recursive alias
Number = int | float

MAX_DEPTH = 64
"""How deeply lists, tuples and dicts may nest in one value."""
BYTES_TAG, TUPLE_TAG, DICT_TAG = "$bytes", "$tuple", "$dict"
TAGS = (BYTES_TAG, TUPLE_TAG, DICT_TAG)
STR_PREFIX, BYTES_PREFIX, FLOAT_PREFIX, JSON_PREFIX = b"s", b"b", b"f", b"j"
_INT_FORM = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
ALLOWED = "str, bytes, int, float, bool, or a list, tuple or dict (str keys) of these"


class ValueRuleError(ValueError):
    """A value breaks the rules above; its message names what and where (the caller adds which argument)."""


def plain(value: object, depth: int = 0) -> Value:
    """The value in plain form (subclasses of the allowed types made plain); ValueRuleError names what is not allowed.

    str, bytes, int and float subclasses (an enum.StrEnum or IntEnum member) become the plain type; bool stays bool.
    """
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or kind is int:
        return value  # type: ignore[return-value]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise ValueRuleError(f"a float must be finite, not {value!r}")
        return value  # type: ignore[return-value]
    if depth >= MAX_DEPTH:
        raise ValueRuleError(f"lists, tuples and dicts may nest at most {MAX_DEPTH} deep")
    if kind is list or kind is tuple:
        items = [plain(item, depth + 1) for item in value]  # type: ignore[attr-defined]
        return items if kind is list else tuple(items)
    if kind is dict:
        return {_dict_key(key): plain(item, depth + 1) for key, item in value.items()}  # type: ignore[attr-defined]
    return _plain_subclass(value, depth)


def _plain_subclass(value: object, depth: int) -> Value:
    """A subclass of an allowed type as its plain base; ValueRuleError for anything else."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes.__bytes__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__index__(value)
    if isinstance(value, float):
        return plain(float.__float__(value), depth)
    if isinstance(value, list | tuple | dict):
        return plain((list if isinstance(value, list) else tuple if isinstance(value, tuple) else dict)(value), depth)
    if value is None:
        raise ValueRuleError("None is not a value (it means absent)")
    hint = " (copy it with bytes())" if isinstance(value, bytearray | memoryview) else ""
    raise ValueRuleError(f"{type(value).__name__} is not a value type{hint}; allowed: {ALLOWED}")


def _dict_key(key: object) -> str:
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str.__str__(key)
    raise ValueRuleError(f"dict keys must be str, not {type(key).__name__}")


def same_value(a: object, b: object) -> bool:
    """True if a and b are the same value: equal, with the same types all the way down (a dict's order aside)."""
    kind = type(a)
    if kind is not type(b):
        return False
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if kind is dict:
        return a.keys() == b.keys() and all(same_value(item, b[key]) for key, item in a.items())  # type: ignore[attr-defined,index]
    if kind is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)  # type: ignore[arg-type]
    return a == b


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return type(value) is int or type(value) is float


# --- the JSON form ---


def to_json(value: Value) -> Any:
    """The value as JSON data: JSON-native types as they are, bytes and tuples tagged, a tag-like dict escaped."""
    kind = type(value)
    if kind is bytes:
        return {BYTES_TAG: value.hex()}  # type: ignore[union-attr]
    if kind is tuple:
        return {TUPLE_TAG: [to_json(item) for item in value]}  # type: ignore[union-attr]
    if kind is list:
        return [to_json(item) for item in value]  # type: ignore[union-attr]
    if kind is dict:
        body = {key: to_json(item) for key, item in value.items()}  # type: ignore[union-attr]
        return {DICT_TAG: body} if is_tag(body) else body
    return value


def is_tag(data: object) -> bool:
    """True if a JSON object is a tag: exactly one member, whose name starts with '$'."""
    return isinstance(data, dict) and len(data) == 1 and next(iter(data)).startswith("$")


def from_json(data: Any, depth: int = 0) -> Value:
    """The value a JSON form stands for; ValueRuleError if it is not one (null, an unknown tag, bad hex, NaN)."""
    kind = type(data)
    if kind is str or kind is bool or kind is int:
        return data  # type: ignore[no-any-return]
    if kind is float:
        return plain(data)
    if depth >= MAX_DEPTH:
        raise ValueRuleError(f"lists, tuples and dicts may nest at most {MAX_DEPTH} deep")
    if kind is list:
        return [from_json(item, depth + 1) for item in data]
    if kind is dict:
        if is_tag(data):
            return _from_tag(data, depth)
        return {key: from_json(item, depth + 1) for key, item in data.items()}
    raise ValueRuleError("null is not a value" if data is None else f"{type(data).__name__} is not a JSON value")


def _from_tag(data: dict[str, Any], depth: int) -> Value:
    [(tag, body)] = data.items()
    if tag == BYTES_TAG:
        if not isinstance(body, str) or not _HEX.fullmatch(body):
            raise ValueRuleError(f'"{BYTES_TAG}" must be hex digits in pairs')
        return bytes.fromhex(body)
    if tag == TUPLE_TAG:
        if not isinstance(body, list):
            raise ValueRuleError(f'"{TUPLE_TAG}" must hold a list')
        return tuple(from_json(item, depth + 1) for item in body)
    if tag == DICT_TAG:
        if not isinstance(body, dict):
            raise ValueRuleError(f'"{DICT_TAG}" must hold an object')
        return {key: from_json(item, depth + 1) for key, item in body.items()}
    raise ValueRuleError(f"unknown tag {tag!r} (known: {', '.join(TAGS)})")


# --- the byte form ---


def encode(value: Value) -> bytes:
    """The value's byte form: a tag byte and its body, or an int's decimal digits (UnicodeEncodeError for a lone surrogate)."""
    kind = type(value)
    if kind is str:
        return STR_PREFIX + value.encode()  # type: ignore[union-attr]
    if kind is bytes:
        return BYTES_PREFIX + value  # type: ignore[operator]
    if kind is int:
        return str(value).encode()
    if kind is float:
        return FLOAT_PREFIX + repr(value).encode()
    return JSON_PREFIX + json.dumps(to_json(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def decode(raw: bytes) -> Value:
    """The value a byte form stands for; ValueRuleError if it is not one (never runs code)."""
    tag, body = raw[:1], raw[1:]
    if tag == STR_PREFIX:
        return body.decode("utf-8", "surrogatepass")  # values kept by earlier versions may hold lone surrogates
    if tag == BYTES_PREFIX:
        return body
    if _INT_FORM.fullmatch(raw):
        return int(raw)
    try:
        if tag == FLOAT_PREFIX:
            return plain(float(body.decode("ascii")))
        if tag == JSON_PREFIX:
            return from_json(json.loads(body))
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueRuleError(f"a malformed {tag.decode('latin-1')!r} value: {exc}") from None
    raise ValueRuleError("no type tag: not a value kvmgr wrote")


def encoded_size(value: Value) -> int:
    """The size the limit counts: a str's UTF-8 bytes, a bytes' length, anything else's byte form less its tag."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode())
    if type(value) is int:
        return len(str(value))
    return len(encode(value)) - 1
