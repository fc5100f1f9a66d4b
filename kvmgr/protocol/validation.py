"""Validation of keys, values and arguments: the rules every backend (the Store, the Redis client) enforces alike.

A valid key is a non-empty str that UTF-8 can encode (no lone surrogates), at most max_key_bytes long in
UTF-8. A valid value is plain data as kvmgr.protocol.values defines it (str, bytes, int, finite float, bool,
and lists, tuples and dicts of these), every str in it UTF-8-encodable, its encoded size at most
max_value_bytes. A subclass of an allowed type (an enum.StrEnum member, say) is converted to the plain type;
anything else (None, bytearray, memoryview, sets, objects) is refused with InvalidKey or InvalidValue, naming
the type. Every check returns its argument in that plain form. `normalize_call` applies the same rules to a
whole call before a client sends it, so the transports only ever carry plain data.
"""

from __future__ import annotations

import heapq
import math
import operator
import sys
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal

from kvmgr.config import DEFAULT_LIMITS, Limits
from kvmgr.errors import InvalidKey, InvalidValue, UnknownOperation
from kvmgr.protocol.operations import OPERATIONS, OpSpec
from kvmgr.protocol.values import Number, Value, ValueRuleError, encoded_size, is_number, plain

ANY_SIZE = sys.maxsize  # the client checks no sizes: they are the server's limits, which it does not know
NOT_BYTES_LIKE = bytearray | memoryview  # buffers that look like bytes but are not values: copy them with bytes()


def check_key(key: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """The key as a plain str; InvalidKey unless it is a non-empty str that UTF-8 can encode, within max_key_bytes."""
    if type(key) is str and key.isascii() and 0 < len(key) <= limits.max_key_bytes:  # the usual case, in one call
        return key
    return _key(key, limits.max_key_bytes)


def check_value(value: object, limits: Limits = DEFAULT_LIMITS) -> Value:
    """The value in plain form; InvalidValue unless it is plain data (kvmgr.protocol.values), its encoded size within max_value_bytes."""
    if (type(value) is bytes or (type(value) is str and value.isascii())) and len(value) <= limits.max_value_bytes:
        return value  # the usual case, in one call
    return _value(value, limits.max_value_bytes)


def check_ttl(ttl: object) -> float | None:
    """A time to live in seconds: None (no expiry) or a finite number above 0, at most MAX_TTL; InvalidValue otherwise."""
    return None if ttl is None else _ttl(ttl)


def ttl_milliseconds(ttl: float) -> int:
    """A ttl in whole milliseconds, rounded up as written (0.05 is 50 ms, 0.0001 is 1 ms): what every backend keeps."""
    return math.ceil(Decimal(repr(ttl)) * 1000)


def check_delta(by: object) -> Number:
    """incr/decr's amount: an int or a finite float (not a bool); InvalidValue otherwise."""
    return _delta(by)


def check_expected(expected: object, limits: Limits = DEFAULT_LIMITS) -> Value | None:
    """cas's expected value in plain form: None (the key must be absent) or a valid value."""
    return _expected(expected, limits.max_value_bytes)


def check_key_list(keys: object, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """The keys as a list of plain str; InvalidKey unless get_many got a list (any iterable) of valid keys."""
    return _key_list(keys, limits.max_key_bytes)


def check_mapping(mapping: object, limits: Limits = DEFAULT_LIMITS) -> dict[str, Value]:
    """The pairs as a dict of plain keys and values; InvalidKey/InvalidValue unless store_many got a dict of valid ones."""
    return _mapping(mapping, limits.max_key_bytes, limits.max_value_bytes)


def check_rendezvous(name: object, parties: object, timeout: object = None) -> tuple[str, int, float | None]:
    """rendezvous's arguments in plain form; InvalidValue unless name is a str, parties a whole number >= 1 (a bool
    is not one) and timeout None or a number of seconds >= 0."""
    return _rendezvous_name(name), _parties(parties), _seconds(timeout)



def check_keys_page(prefix: object, limit: object, after: object) -> tuple[str | None, int | None, str | None]:
    """keys()'s arguments in plain form; InvalidValue unless prefix and after are str or None and limit a whole
    number above 0 or None."""
    return _optional_text(prefix, "prefix"), _page_limit(limit), _optional_text(after, "after")


def page_of_keys(keys: Iterable[str], prefix: str | None, limit: int | None, after: str | None) -> list[str]:
    """The sorted keys that start with prefix and sort after `after`, at most `limit` of them."""
    chosen = [key for key in keys if key.startswith(prefix)] if prefix else list(keys)
    if after is not None:
        chosen = [key for key in chosen if key > after]
    if limit is None or limit >= len(chosen):
        return sorted(chosen)
    return heapq.nsmallest(limit, chosen)


def normalize_call(method: str, args: tuple) -> tuple:
    """A call's arguments in plain form, for a client to send: str/bytes subclasses become str/bytes.

    Refuses what no server could accept: InvalidKey/InvalidValue by the rules above (sizes excepted: they
    are the server's to enforce), TypeError for a wrong number of arguments, UnknownOperation for a method
    the store does not have.
    """
    try:
        fewest, most, normalize = _CALLS[method]
    except (KeyError, TypeError):
        raise UnknownOperation(f"method {method!r} is not exposed; exposed are {', '.join(sorted(_CALLS))}") from None
    if not fewest <= len(args) <= most:
        expected = str(most) if fewest == most else f"{fewest} to {most}"
        raise TypeError(f"{method} takes {expected} arguments ({len(args)} given)")
    return normalize(*args)


def _key(key: object, limit: int = ANY_SIZE) -> str:
    if type(key) is str and key.isascii() and 0 < len(key) <= limit:  # the usual case, at the cost of two O(1) checks
        return key
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key must be a non-empty str, not {_describe(key)}")
    key = str.__str__(key)  # a subclass's plain str (the method of str itself, whatever the subclass overrides)
    size = len(key) if key.isascii() else len(_utf8(key, InvalidKey, "key"))
    if size > limit:
        raise InvalidKey(f"key is longer than {limit} bytes")
    return key


def _value(value: object, limit: int = ANY_SIZE, what: str = "value") -> Value:
    kind = type(value)
    if kind is bytes:
        assert isinstance(value, bytes)  # for the type checker: the exact-type test above is the fast path
        size = len(value)
    elif kind is str:
        assert isinstance(value, str)
        size = len(value) if value.isascii() else len(_utf8(value, InvalidValue, what))  # one copy, then dropped
    else:
        try:
            value = plain(value)
            size = encoded_size(value)
        except ValueRuleError as exc:
            raise InvalidValue(f"{what}: {exc}") from None
        except UnicodeEncodeError as exc:
            raise InvalidValue(f"{what} holds a str UTF-8 cannot encode (a lone surrogate at position {exc.start})") from None
        except ValueError as exc:  # an int of more digits than Python converts to text
            raise InvalidValue(f"{what} cannot be encoded: {exc}") from None
    if size > limit:
        raise InvalidValue(f"{what} is larger than {limit} bytes")
    return value


MAX_TTL = 100 * 365 * 86400.0
"""The longest time to live, in seconds (a hundred years): a longer one is surely a mistake (a timestamp, say)."""


def _ttl(ttl: object) -> float | None:
    if ttl is None:
        return None
    if not is_number(ttl) or not 0 < ttl <= MAX_TTL:  # type: ignore[operator]
        raise InvalidValue(f"ttl must be a number of seconds above 0 and at most {MAX_TTL:.0f}, not {ttl!r:.40}")
    return float(ttl)  # type: ignore[arg-type]


def _delta(by: object) -> Number:
    if type(by) is int:
        return by
    if type(by) is float and math.isfinite(by):
        return by
    if isinstance(by, int | float) and not isinstance(by, bool) and type(by) not in (int, float):  # a subclass
        return _delta(int.__index__(by) if isinstance(by, int) else float.__float__(by))
    raise InvalidValue(f"incr/decr: by must be an int or a finite float, not {by!r:.40}")


def _expected(expected: object, limit: int) -> Value | None:
    return None if expected is None else _value(expected, limit, "expected value")


def _text(text: str, error: type[InvalidKey | InvalidValue], what: str) -> str:
    """A str argument that is neither key nor value (a name, a prefix) in plain form, UTF-8-encodable."""
    text = str.__str__(text)
    if not text.isascii():
        _utf8(text, error, what)
    return text


def _utf8(text: str, error: type[InvalidKey | InvalidValue], what: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        surrogate = ord(text[exc.start])
        source = f" (the undecodable byte 0x{surrogate - 0xDC00:02x})" if 0xDC80 <= surrogate <= 0xDCFF else ""
        raise error(f"{what} cannot be encoded as UTF-8: a lone surrogate {text[exc.start]!r}{source} at position {exc.start}") from None


def _optional_text(given: object, name: str) -> str | None:
    if given is None:
        return None
    if not isinstance(given, str):
        raise InvalidValue(f"keys: {name} must be a str or None, not {type(given).__name__}")
    return _text(given, InvalidValue, f"keys: {name}")


def _page_limit(limit: object) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidValue(f"keys: limit must be a whole number above 0 or None, not {_shown(limit)}")
    return None if limit is None else operator.index(limit)


def _seconds(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout) or timeout < 0:
        raise InvalidValue(f"a timeout must be a number of seconds >= 0, not {timeout!r:.40}")
    return float(timeout)


def _describe(thing: object) -> str:
    if isinstance(thing, str):
        return "an empty str"
    return type(thing).__name__


def _shown(number: object) -> str:
    """A number as given (a bool or int shown as itself, anything else by its type)."""
    return repr(number) if isinstance(number, int) and number.bit_length() < 64 else _describe(number)


def _key_list(keys: object, limit: int) -> list[str]:
    if isinstance(keys, str | bytes | NOT_BYTES_LIKE) or not isinstance(keys, Iterable):
        raise InvalidKey(f"get_many takes a list of keys, not {_describe(keys)}")
    return [_key(key, limit) for key in keys]


def _mapping(mapping: object, key_limit: int, value_limit: int) -> dict[str, Value]:
    if not isinstance(mapping, Mapping):
        raise InvalidValue(f"store_many takes a dict of key -> value, not {_describe(mapping)}")
    return {_key(key, key_limit): _value(value, value_limit) for key, value in mapping.items()}


RENDEZVOUS_ARGUMENTS = "rendezvous takes a name (str) and a number of parties (an int >= 1, not a bool), got"


def _rendezvous_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidValue(f"{RENDEZVOUS_ARGUMENTS} a name of type {type(name).__name__}")
    return _text(name, InvalidValue, "rendezvous name")


def _parties(parties: object) -> int:
    if isinstance(parties, bool) or not isinstance(parties, int) or parties < 1:
        raise InvalidValue(f"{RENDEZVOUS_ARGUMENTS} parties={_shown(parties)}")
    return operator.index(parties)


def check_name(name: object, what: str = "name") -> str:
    """A lock's or queue's name in plain form; InvalidValue unless it is a non-empty str UTF-8 can encode."""
    if not isinstance(name, str) or not name:
        raise InvalidValue(f"{what} must be a non-empty str, not {_describe(name)}")
    return _text(name, InvalidValue, what)


def check_lease(lease: object) -> float:
    """A lock's lease: seconds above 0, at most a day; InvalidValue otherwise."""
    if not is_number(lease) or not 0 < lease <= 86400:  # type: ignore[operator]
        raise InvalidValue(f"a lease must be a number of seconds above 0 and at most 86400, not {lease!r:.40}")
    return float(lease)  # type: ignore[arg-type]


def check_counter(number: object, what: str) -> int:
    """A fencing token or a version: a whole number >= 0 (not a bool); InvalidValue otherwise."""
    if type(number) is not int or number < 0:
        raise InvalidValue(f"{what} must be a whole number >= 0, not {_shown(number)}")
    return number


def check_wait(timeout: object) -> float | None:
    """A blocking call's own timeout: None (the server's ceiling) or seconds >= 0."""
    return _seconds(timeout)


# What a client sends: each parameter of the operation table in plain form. No sizes are checked here.
PARAMETER_CHECKS: dict[str, Callable[[object], object]] = {
    "key": _key,  # ANY_SIZE by default: called directly, the usual calls' checks add no frame of their own
    "value": _value,
    "expected": lambda expected: _expected(expected, ANY_SIZE),
    "keys": lambda keys: _key_list(keys, ANY_SIZE),
    "mapping": lambda mapping: _mapping(mapping, ANY_SIZE, ANY_SIZE),
    "prefix": lambda prefix: _optional_text(prefix, "prefix"),
    "after": lambda after: _optional_text(after, "after"),
    "limit": lambda limit: _page_limit(limit),
    "name": lambda name: check_name(name),
    "parties": _parties,
    "timeout": lambda timeout: _seconds(timeout),
    "ttl": _ttl,
    "by": _delta,
    "lease": check_lease,
    "token": lambda token: check_counter(token, "a fencing token"),
}


OPERATION_CHECKS: dict[tuple[str, str], Callable[[object], object]] = {
    ("rendezvous", "name"): _rendezvous_name,
    ("wait", "after"): lambda after: check_counter(after, "after (a version)"),  # keys' `after` is a key
}
"""Where one operation checks a parameter its own way (its own message)."""


def _normalizer(spec: OpSpec) -> Callable[..., tuple]:
    """The function that puts a call's arguments in plain form, parameter by parameter (one argument: no loop; more:
    map and operator.call, no generator; an optional parameter left out is not checked)."""
    checks = [OPERATION_CHECKS.get((spec.name, name)) or PARAMETER_CHECKS[name] for name in spec.params]
    if len(checks) == 1:
        check = checks[0]
        return lambda argument: (check(argument),)
    return lambda *arguments: tuple(map(operator.call, checks, arguments))


_CALLS: dict[str, tuple[int, int, Callable[..., tuple]]] = {
    spec.name: (spec.least_args, len(spec.params), _normalizer(spec)) for spec in OPERATIONS
}
