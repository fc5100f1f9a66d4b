"""Validation of keys, values and arguments: the rules every backend (the Store, the Redis client) enforces alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kvmgr.config import DEFAULT_LIMITS, Limits
from kvmgr.errors import InvalidKey, InvalidValue

Value = str | bytes


def check_key(key: object, limits: Limits = DEFAULT_LIMITS) -> None:
    """InvalidKey unless key is a non-empty str within the size limit."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key must be a non-empty str, not {_describe(key)}")
    limit = limits.max_key_bytes
    if len(key) * 4 > limit and len(key.encode("utf-8", "surrogatepass")) > limit:  # UTF-8 takes 1 to 4 bytes a character
        raise InvalidKey(f"key is longer than {limit} bytes")


def check_value(value: object, limits: Limits = DEFAULT_LIMITS) -> None:
    """InvalidValue unless value is str or bytes within the size limit."""
    limit = limits.max_value_bytes
    if isinstance(value, str):
        size = len(value) if len(value) * 4 <= limit else len(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, bytes):
        size = len(value)
    else:
        raise InvalidValue(f"value must be str or bytes, not {_describe(value)}")
    if size > limit:
        raise InvalidValue(f"value is larger than {limit} bytes")


def check_key_list(keys: object, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The keys as a list; InvalidKey unless it is a list of valid keys."""
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise InvalidKey(f"get_many takes a list of keys, not {_describe(keys)}")
    keys = list(keys)
    for key in keys:
        check_key(key, limits)
    return keys


def check_mapping(mapping: object, limits: Limits = DEFAULT_LIMITS) -> None:
    """InvalidKey/InvalidValue unless store_many got a dict of valid keys and values."""
    if not isinstance(mapping, Mapping):
        raise InvalidValue(f"store_many takes a dict of key -> value, not {type(mapping).__name__}")
    for key, value in mapping.items():
        check_key(key, limits)
        check_value(value, limits)


def check_rendezvous(name: object, parties: object) -> None:
    """InvalidValue unless name is a str and parties an int >= 1."""
    if not isinstance(name, str) or not isinstance(parties, int) or parties < 1:
        raise InvalidValue("rendezvous takes a name (str) and a number of parties (int >= 1)")


def _describe(thing: object) -> str:
    if isinstance(thing, str):
        return "an empty str"
    return type(thing).__name__
