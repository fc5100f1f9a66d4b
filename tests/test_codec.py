"""The codec below the process level: load_request and load_reply on well-formed, malformed and hostile pickles."""

from __future__ import annotations

import builtins
import copyreg
import os
import pickle
import re
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmgr.errors import InvalidValue, KeyNotFound, KvmgrError, ProtocolError, exit_status
from kvmgr.protocol.validation import check_value
from kvmgr.protocol.wire import ERROR, RETURN, dump, load_reply, load_request

Loader = Callable[[bytes], Any]
LOADERS = [pytest.param(load_request, id="request"), pytest.param(load_reply, id="reply")]
REQUEST: tuple[object, ...] = ("ident", "store_many", ({"k": "v", "b": b"\x00"},), {})


class Exploit:
    """Unpickles by calling `call(*args)`: a pickle of one runs whatever a plain pickle.loads is given."""

    def __init__(self, call: Callable[..., Any], *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.call, self.args


class ForeignError(KvmgrError):
    """A KvmgrError subclass that is not one of kvmgr's own."""


class Plain:
    """An ordinary class."""


def creating_with_eval(path: Path) -> Exploit:
    return Exploit(eval, f"open({str(path)!r}, 'w').close()")


EXPLOITS = [  # payloads that would each create a file, with the name the unpickler must refuse
    pytest.param("builtins.eval", creating_with_eval, id="eval"),
    pytest.param("builtins.exec", lambda path: Exploit(exec, f"open({str(path)!r}, 'w').close()"), id="exec"),
    pytest.param(f"{os.system.__module__}.system", lambda path: Exploit(os.system, f"touch {path}"), id="os.system"),
    pytest.param("subprocess.Popen", lambda path: Exploit(subprocess.Popen, ["touch", str(path)]), id="subprocess.Popen"),
]


@pytest.mark.parametrize(("name", "exploit"), EXPLOITS)
@pytest.mark.parametrize("load", LOADERS)
def test_a_pickle_that_would_run_code_is_refused_naming_what_and_nothing_runs(
    tmp_path: Path, load: Loader, name: str, exploit: Callable[[Path], Exploit],
) -> None:
    target = tmp_path / "pwned"
    payload = exploit(target)
    message: object = ("i", "get", (payload,), {}) if load is load_request else (ERROR, payload)
    with pytest.raises(ProtocolError, match=f"^refused to unpickle {re.escape(name)}"):
        load(dump(message))
    assert not target.exists()


def test_the_exploits_are_real_so_the_refusal_above_means_something(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    pickle.loads(dump(creating_with_eval(target)))  # no process involved
    assert target.exists()


@pytest.mark.parametrize("load", LOADERS)
def test_the_classic_protocol_0_global_is_refused(tmp_path: Path, load: Loader) -> None:
    target = tmp_path / "pwned"
    data = f"cos\nsystem\n(S'touch {target}'\ntR.".encode()
    with pytest.raises(ProtocolError, match=r"^refused to unpickle os\.system"):
        load(data)
    assert not target.exists()


@pytest.mark.parametrize(("thing", "name"), [
    pytest.param(Exploit, "tests.test_codec.Exploit", id="a class"),
    pytest.param(Plain(), "tests.test_codec.Plain", id="an instance of a class"),
    pytest.param(builtins.getattr, "builtins.getattr", id="a builtin function"),
    pytest.param(complex(1, 2), "builtins.complex", id="a builtin type"),
    pytest.param(KeyNotFound("k"), "kvmgr.errors.KeyNotFound", id="a kvmgr error"),
    pytest.param(ValueError("v"), "builtins.ValueError", id="a builtin exception"),
])
def test_a_request_carries_plain_data_only(thing: object, name: str) -> None:
    with pytest.raises(ProtocolError, match=f"^refused to unpickle {name}: only plain built-in data is accepted$"):
        load_request(dump(("i", "store", ("k", thing), {})))


def test_a_request_of_every_plain_type_decodes_as_sent() -> None:
    args = ("k", b"v", 1, -(2**200), 1.5, None, True, [1, [2]], {"d": (3,)}, {4}, frozenset({5}), bytearray(b"b"))
    assert load_request(dump(("i", "m", args, {"kw": "x"}))) == ("i", "m", args, {"kw": "x"})
    assert load_request(dump(("i", "m", list(args), None))) == ("i", "m", args, {})  # a list of args, no kwargs


@pytest.mark.parametrize("request_", [
    pytest.param(["i", "get", ("k",), {}], id="a list"),
    pytest.param(("i", "get", ("k",)), id="three items"),
    pytest.param(("i", "get", ("k",), {}, None), id="five items"),
    pytest.param(("i", 7, ("k",), {}), id="method not a str"),
    pytest.param(("i", "get", "k", {}), id="args a str"),
    pytest.param(("i", "get", {"k": 1}, {}), id="args a dict"),
    pytest.param(("i", "get", ("k",), ["x"]), id="kwargs a list"),
    pytest.param("GET foo", id="a str"),
    pytest.param(None, id="None"),
])
def test_a_request_of_the_wrong_shape_is_refused(request_: object) -> None:
    with pytest.raises(ProtocolError, match=r"^a request must be a tuple \(ident, method, args, kwargs\)$"):
        load_request(dump(request_))


@pytest.mark.parametrize("load", LOADERS)
def test_every_truncation_of_a_message_is_unreadable(load: Loader) -> None:
    whole = dump(REQUEST if load is load_request else (ERROR, KeyNotFound("k")))
    for end in range(len(whole)):
        with pytest.raises(ProtocolError, match=r"^unreadable (request|reply): "):
            load(whole[:end])


@pytest.mark.parametrize("data", [
    pytest.param(b"GET foo\n", id="the homework's text protocol"),
    pytest.param(b'{"op": "get"}', id="JSON"),
    pytest.param(b"\x00\x01\x02\x03", id="binary noise"),
    pytest.param(b"\x80\x06N.", id="an unknown pickle protocol"),
    pytest.param(b".", id="STOP on an empty stack"),
    pytest.param(b"\x80\x04h\x05.", id="a memo entry never stored"),
    pytest.param(b"\x80\x04\x82\x01.", id="an extension code"),
    pytest.param(b"P0\n.", id="a persistent id"),
    pytest.param(b"\x80\x04K\x01)R.", id="REDUCE on an int"),
    pytest.param(b"\x80\x04]}b.", id="BUILD on a list"),
    pytest.param(b"\x80\x04\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01", id="an int claiming 2 GiB of digits"),
    pytest.param(b"\x80\x04\x95" + struct.pack("<Q", 2**62) + b"N.", id="a frame claiming 4 EiB"),
    pytest.param(b"L" + b"9" * 100_000 + b"L\n.", id="an int of 100000 decimal digits"),
])
@pytest.mark.parametrize("load", LOADERS)
def test_what_is_not_a_pickle_is_unreadable(load: Loader, data: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"^unreadable (request|reply): "):
        load(data)


@pytest.mark.parametrize("opcode", [pytest.param(b"\x80\x04\x8e", id="BINBYTES8"), pytest.param(b"\x80\x05\x96", id="BYTEARRAY8")])
def test_bytes_claiming_an_impossible_length_are_unreadable(opcode: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"^unreadable request: "):
        load_request(opcode + struct.pack("<Q", 2**62) + b"ab.")


def nested_lists(depth: int) -> bytes:
    """A pickle of `depth` lists, each inside the one before, built without recursion (pickle.dumps would recurse)."""
    return b"\x80\x04" + b"]" * depth + b"a" * (depth - 1)


def test_deeply_nested_lists_are_a_protocol_error_not_a_recursion_error() -> None:
    with pytest.raises(ProtocolError, match=r"^a request must be a tuple"):
        load_request(nested_lists(200_000) + b".")
    with pytest.raises(ProtocolError, match=r"^unreadable reply: "):
        load_reply(nested_lists(200_000) + b".")  # one list where (kind, result) belongs


def test_deeply_nested_data_inside_a_request_is_plain_data_left_to_the_store() -> None:
    ident, method, args, kwargs = load_request(b"\x80\x04(\x8c\x01i\x8c\x05store\x8c\x01k" + nested_lists(200_000) + b"\x86}t.")
    assert (ident, method, kwargs) == ("i", "store", {}) and isinstance(args[1], list)
    with pytest.raises(InvalidValue):
        check_value(args[1])  # the Store's check of a value refuses it without recursing into it


def test_huge_ints_decode_as_plain_data() -> None:
    huge = 7**100_000  # 35 KB of pickle, over the 4300-digit limit of int <-> str conversion
    assert load_request(dump(("i", "rendezvous", ("r", huge), {})))[2] == ("r", huge)
    assert load_reply(dump((RETURN, -huge))) == (RETURN, -huge)


@pytest.mark.parametrize("error", [KeyNotFound("k"), InvalidValue("bad"), ProtocolError("p"), KvmgrError("x")], ids=type)
def test_a_reply_carries_every_kvmgr_error(error: KvmgrError) -> None:
    kind, carried = load_reply(dump((ERROR, error)))
    assert kind == ERROR and type(carried) is type(error) and str(carried) == str(error)


@pytest.mark.parametrize("error", [ValueError("v"), KeyError("k"), OSError(2, "gone"), TimeoutError("t")], ids=type)
def test_a_reply_carries_builtin_exceptions(error: Exception) -> None:
    kind, carried = load_reply(dump((ERROR, error)))
    assert kind == ERROR and type(carried) is type(error) and carried.args == error.args


@pytest.mark.parametrize(("thing", "name"), [
    pytest.param(ForeignError("f"), "tests.test_codec.ForeignError", id="a KvmgrError subclass from elsewhere"),
    pytest.param(Plain(), "tests.test_codec.Plain", id="an instance of a class"),
    pytest.param(KvmgrError(Exploit(eval, "1")), "builtins.eval", id="a kvmgr error carrying an exploit"),
    pytest.param(exit_status, "kvmgr.errors.exit_status", id="a kvmgr function"),
    pytest.param(builtins.object, "builtins.object", id="a builtin type that is no exception"),
])
def test_a_reply_carrying_any_other_class_is_refused(thing: object, name: str) -> None:
    with pytest.raises(ProtocolError, match=f"^refused to unpickle {name} in a reply$"):
        load_reply(dump((ERROR, thing)))


def test_a_reply_of_the_wrong_shape_is_unreadable() -> None:
    for reply in [(RETURN,), (RETURN, 1, 2), 5, None]:
        with pytest.raises(ProtocolError, match=r"^unreadable reply: "):
            load_reply(dump(reply))


def test_an_extension_code_registered_for_a_global_is_refused(tmp_path: Path) -> None:
    """EXT opcodes name a global through copyreg's registry: it goes through find_class too, and is refused there."""
    target = tmp_path / "pwned"
    copyreg.add_extension("os", "system", 0x7FFF_FFF0)
    try:
        data = b"\x80\x02\x84" + struct.pack("<i", 0x7FFF_FFF0) + pickle.dumps((f"touch {target}",), 2)[2:-1] + b"R."
        with pytest.raises(ProtocolError, match=r"^refused to unpickle os\.system"):
            load_request(data)
    finally:
        copyreg.remove_extension("os", "system", 0x7FFF_FFF0)
    assert not target.exists()


def test_the_refusal_holds_for_decoding_a_request_only_in_any_thread() -> None:
    """After a request is decoded (or refused), this thread and others unpickle classes as before: the refusal is the
    request decoder's, not the process's."""
    with pytest.raises(ProtocolError):
        load_request(dump(("i", "store", ("k", Plain()), {})))
    assert load_request(dump(REQUEST)) == REQUEST
    assert type(pickle.loads(dump(Plain()))) is Plain
    found: list[object] = []
    thread = threading.Thread(target=lambda: found.append(pickle.loads(dump(KeyNotFound("k")))))
    thread.start()
    thread.join()
    assert type(found[0]) is KeyNotFound


def test_bytes_hidden_after_a_requests_stop_are_never_part_of_the_next_request() -> None:
    """Each request is decoded by an unpickler of its own: what follows its STOP is dropped with it, and the next
    request starts afresh (its memo too)."""
    hidden = dump(("i", "quit", (), {}))[:-1]  # a request without its STOP, hidden after the first one's
    assert load_request(dump(REQUEST) + hidden) == REQUEST
    assert load_request(dump(("i", "get", ("k",), {}))) == ("i", "get", ("k",), {})
