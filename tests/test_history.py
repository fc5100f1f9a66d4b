"""Recording and reading JSON-lines histories, and rejecting malformed ones."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kvmgr.errors import HistoryError
from kvmgr.protocol.values import same_value
from kvmgr.verify import history
from kvmgr.verify.history import (
    HistoryWriter,
    Operation,
    encode_value,
    merge_histories,
    operation_from_dict,
    operation_to_json,
    read_history,
)

SAMPLES = [
    Operation(client="alice", op="store", key="foo", value="v1", expected=None, result="saved", status="ok", start=1712, end=1790),
    Operation(client="bob", op="cas", key="foo", value="v2", expected="v1", result=True, status="ok", start=1750, end=1801),
    Operation(client="bob", op="cas", key="bar", value="v3", expected=None, result=False, status="ok", start=1802, end=1900),
    Operation(client="carol", op="get", key="foo", value=None, expected=None, result="v2", status="ok", start=1810, end=1820),
    Operation(client="carol", op="get", key="nope", value=None, expected=None, result=None, status="ok", start=1830, end=1840),
    Operation(client="dave", op="delete", key="foo", value=None, expected=None, result=True, status="ok", start=1850, end=1860),
    Operation(client="dave", op="store", key="foo", value="v4", expected=None, result=None, status="info", start=1870, end=None),
    Operation(client="erin", op="delete", key="foo", value=None, expected=None, result=None, status="fail", start=1880, end=1890),
]

GOOD = {"client": "alice", "op": "store", "key": "foo", "value": "v1", "result": "saved", "status": "ok", "start": 1712, "end": 1790}


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write raw lines to a file and return its path."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_round_trip_through_writer_and_reader(tmp_path: Path) -> None:
    """Every operation comes back exactly as recorded."""
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as writer:
        for operation in SAMPLES:
            writer.record(operation)
    assert read_history(path) == SAMPLES
    assert len(path.read_text().splitlines()) == len(SAMPLES)


def test_writer_appends_and_flushes_each_record(tmp_path: Path) -> None:
    """A line is on disk as soon as record() returns; reopening appends."""
    path = tmp_path / "history.jsonl"
    writer = HistoryWriter(path)
    writer.record(SAMPLES[0])
    assert read_history(path) == SAMPLES[:1]
    writer.close()
    writer.close()
    with HistoryWriter(path) as again:
        again.record(SAMPLES[1])
    assert read_history(path) == SAMPLES[:2]
    with pytest.raises(HistoryError, match="closed"):
        writer.record(SAMPLES[2])


def test_writer_is_thread_safe(tmp_path: Path) -> None:
    """Lines written from several threads never interleave."""
    path = tmp_path / "history.jsonl"

    def work(writer: HistoryWriter, client: str) -> None:
        for n in range(200):
            writer.record(
                Operation(
                    client=client, op="store", key=f"key-{n}", value="x" * 500, expected=None, result="updated", status="ok",
                    start=n, end=n + 1,
                )
            )

    with HistoryWriter(path) as writer:
        threads = [threading.Thread(target=work, args=(writer, f"c{n}")) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(read_history(path)) == 1600


def test_writer_rejects_an_invalid_operation(tmp_path: Path) -> None:
    """An impossible record is refused before it reaches the file."""
    path = tmp_path / "history.jsonl"
    with HistoryWriter(path) as writer, pytest.raises(HistoryError, match="'end'"):
        writer.record(Operation(client="a", op="get", key="k", value=None, expected=None, result=None, status="info", start=10, end=20))
    assert path.read_text() == ""


def test_values_keep_their_type_and_bytes_are_tagged(tmp_path: Path) -> None:
    """bytes become {"$bytes": hex}; a str stays a JSON string whatever it looks like; both read back as written."""
    assert encode_value(b"\x00\xffab") == b"\x00\xffab"
    assert encode_value("plain") == "plain" and encode_value(12) == 12
    assert encode_value(None) is None
    with pytest.raises(TypeError, match="bytearray is not a value type"):
        encode_value(bytearray(b"\x01"))
    tricky = ["hex:01", '{"$bytes": "01"}', "$bytes", ""]
    ops = [Operation(client="a", op="store", key="k", value=b"\x00\xffab", expected=None, result="saved", status="ok", start=1, end=2)]
    ops += [
        Operation(client="a", op="cas", key="k", value=value, expected=b"\x01", result=False, status="ok", start=3, end=4)
        for value in tricky
    ]
    ops += [
        Operation(client="a", op="get", key="k", value=None, expected=None, result=value, status="ok", start=5, end=6)
        for value in [*tricky, b""]
    ]
    lines = [json.loads(operation_to_json(o)) for o in ops]
    assert lines[0]["value"] == {"$bytes": "00ff6162"}
    assert [line["value"] for line in lines[1:5]] == tricky and lines[1]["expected"] == {"$bytes": "01"}
    assert [line["result"] for line in lines[5:]] == [*tricky, {"$bytes": ""}]
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as writer:
        for operation in ops:
            writer.record(operation)
    assert read_history(path) == ops


def test_tags_are_matched_exactly() -> None:
    """Upper-case hex is read; only an object of exactly one '$' member is a tag."""
    line = {**GOOD, "value": {"$bytes": "0A"}}
    assert operation_from_dict(line, "x:1").value == b"\n"


def test_json_layout() -> None:
    """One line; 'expected' appears for cas only."""
    store_line, cas_line = operation_to_json(SAMPLES[0]), operation_to_json(SAMPLES[1])
    assert "\n" not in store_line
    assert json.loads(store_line) == GOOD
    assert "expected" not in json.loads(store_line)
    assert json.loads(cas_line)["expected"] == "v1"


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    """Empty and whitespace-only lines carry no operation."""
    path = write_lines(tmp_path / "h.jsonl", ["", json.dumps(GOOD), "   ", json.dumps(GOOD)])
    assert len(read_history(path)) == 2


def test_expected_null_may_appear_on_other_ops() -> None:
    """A non-cas operation may carry 'expected': null."""
    assert operation_from_dict({**GOOD, "expected": None}, "x:1").expected is None


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "start"}), "missing field 'start'"),
    (json.dumps({**GOOD, "end": "abc"}), "'end' must be an integer (got \"abc\")"),
    (json.dumps({**GOOD, "start": True}), "'start' must be an integer"),
    (json.dumps({**GOOD, "op": "put"}), "'op' must be one of store, get, delete, cas, incr, decr, add, pop, expire, persist"),
    (json.dumps({**GOOD, "status": "maybe"}), "'status' must be one of ok, fail, info"),
    (json.dumps({**GOOD, "status": "info", "result": None}), "'end' must be null when status is info"),
    (json.dumps({**GOOD, "status": "info", "end": None}), "'result' must be null when status is info"),
    (json.dumps({**GOOD, "end": 1000}), "'end' (1000) is before 'start' (1712)"),
    (json.dumps({**GOOD, "result": "stored"}), "'result' of store must be \"saved\", \"updated\" or null (not recorded)"),
    (json.dumps({**GOOD, "op": "get", "value": None, "result": {"$set": [1]}}), "'result' is not a value (str, int"),
    (json.dumps({**GOOD, "op": "delete", "value": None, "result": "yes"}), "'result' of delete must be true or false"),
    (json.dumps({**GOOD, "op": "cas", "expected": None, "result": None}), "'result' of cas must be true or false"),
    (json.dumps({**GOOD, "op": "cas"}), "missing field 'expected'"),
    (json.dumps({**GOOD, "expected": "v0"}), "'expected' is only for cas"),
    (json.dumps({**GOOD, "op": "get", "result": None}), "'value' must be null for get"),
    (json.dumps({**GOOD, "value": None}), "'value' is not a value (str, int, float, bool, list, dict, or a tagged "
     "$bytes/$tuple/$dict form): null is not a value (got null)"),
    (json.dumps({**GOOD, "client": 7}), "'client' must be a string"),
    (json.dumps({**GOOD, "key": ""}), "'key' must not be empty"),
    (json.dumps({**GOOD, "colour": "red"}), "unknown field \"colour\""),
    (json.dumps({**GOOD, "value": [None]}), "'value' is not a value"),
    (json.dumps({**GOOD, "value": {"$bytes": "zz"}}), '"$bytes" must be hex digits in pairs (got {"$bytes": "zz"})'),
    (json.dumps({**GOOD, "value": {"$bytes": "abc"}}), '"$bytes" must be hex digits in pairs'),
    (json.dumps({**GOOD, "value": {"$bytes": "0 1"}}), '"$bytes" must be hex digits in pairs'),
    (json.dumps({**GOOD, "value": {"$bytes": 1}}), '"$bytes" must be hex digits in pairs (got {"$bytes": 1})'),
    (json.dumps({**GOOD, "value": {"$base64": "AA=="}}), "unknown tag '$base64' (known: $bytes, $tuple, $dict)"),
    (json.dumps({**GOOD, "value": {"$tuple": "ab"}}), '"$tuple" must hold a list'),
    (json.dumps({**GOOD, "value": {"$dict": [1]}}), '"$dict" must hold an object'),
    (json.dumps({**GOOD, "value": [1.5, {"$tuple": [None]}]}), "null is not a value"),
    (json.dumps({**GOOD, "value": "x"}).replace('"x"', "NaN"), "a float must be finite, not nan"),
    (json.dumps({**GOOD, "op": "cas", "expected": {"$bytes": "x"}, "result": True}), "'expected' is not a value"),
    (json.dumps({**GOOD, "op": "get", "value": None, "result": {"$bytes": "0g"}}), "'result' is not a value"),
    (json.dumps({**GOOD, "op": "pop", "value": None, "result": {"$bytes": "0g"}}), "'result' is not a value"),
    (json.dumps({**GOOD, "op": "incr", "value": "1", "result": 2}), "not a bool) (got \"1\")"),
    (json.dumps({**GOOD, "op": "incr", "value": True, "result": 2}), "'value' must be a number (an int or a finite float, not a bool)"),
    (json.dumps({**GOOD, "op": "decr", "value": None, "result": 2}), "'value' must be a number"),
    (json.dumps({**GOOD, "op": "incr", "value": 1, "result": "2"}), "'result' must be a number (an int or a finite"),
    (json.dumps({**GOOD, "op": "incr", "value": 1, "result": None}), "'result' must be a number"),
    (json.dumps({**GOOD, "op": "incr", "value": 1}).replace('"saved"', "Infinity"), "'result' must be a number"),
    (json.dumps({**GOOD, "op": "add", "result": "saved"}), "'result' of add must be true or false (got \"saved\")"),
    (json.dumps({**GOOD, "op": "add", "value": None, "result": True}), "'value' is not a value"),
    (json.dumps({**GOOD, "op": "pop", "result": None}), "'value' must be null for pop"),
    (json.dumps({**GOOD, "op": "expire", "value": None, "result": True}), "missing field 'ttl' (required for expire)"),
    (json.dumps({**GOOD, "op": "expire", "value": None, "ttl": 0, "result": True}), "'ttl' must be a number of seconds above 0 (got 0)"),
    (json.dumps({**GOOD, "op": "expire", "value": None, "ttl": "5", "result": True}), "'ttl' must be a number of seconds above 0"),
    (json.dumps({**GOOD, "ttl": True}), "'ttl' must be a number of seconds above 0 (got true)"),
    (json.dumps({**GOOD, "ttl": -1.5}), "'ttl' must be a number of seconds above 0 (got -1.5)"),
    (json.dumps({**GOOD, "op": "get", "value": None, "ttl": 5}), "'ttl' is only for store, add, expire (got 5 on get)"),
    (json.dumps({**GOOD, "op": "persist", "value": None, "ttl": 5, "result": True}), "'ttl' is only for store, add, expire"),
    (json.dumps({**GOOD, "op": "persist", "value": None, "result": 1}), "'result' of persist must be true or false (got 1)"),
    ('{"client": "a", "start": 1' + "0" * 4300 + "}", "invalid JSON: Exceeds the limit (4300 digits)"),
    ("[" * 100_000 + "]" * 100_000, "invalid JSON: nested too deeply"),
    ('{"client": "a", "start": NaN}', "missing field"),
    (json.dumps({**GOOD, "start": 1.5}), "'start' must be an integer (got 1.5)"),
    (json.dumps({**GOOD, "client": "x" * 10_000, "key": 5}), "'key' must be a string (got 5)"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES, ids=[problem for _, problem in BAD_LINES])
def test_malformed_line_names_file_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    """The error names the file, the line number and what is wrong."""
    path = write_lines(tmp_path / "history.jsonl", [json.dumps(GOOD), "", line])
    with pytest.raises(HistoryError) as caught:
        read_history(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: ")
    assert "history.jsonl:3" in message
    assert problem in message


def test_an_offending_value_is_shown_cut_short(tmp_path: Path) -> None:
    """A huge bad value is named, not copied whole into the one-line error."""
    path = write_lines(tmp_path / "history.jsonl", [json.dumps({**GOOD, "value": ["x" * 100_000, None]})])
    with pytest.raises(HistoryError) as caught:
        read_history(path)
    assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)


def test_a_line_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line longer than MAX_LINE_BYTES (a file with no newline, say) is refused instead of read whole."""
    monkeypatch.setattr(history, "MAX_LINE_BYTES", 200)
    path = write_lines(tmp_path / "history.jsonl", [json.dumps(GOOD), json.dumps({**GOOD, "client": "x" * 200})])
    with pytest.raises(HistoryError, match=r"history\.jsonl:2: line longer than 200 bytes"):
        read_history(path)


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    """Undecodable bytes are reported like any other malformed line."""
    path = tmp_path / "history.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    with pytest.raises(HistoryError, match=r"history\.jsonl:2: not valid UTF-8"):
        read_history(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    """A history that does not exist raises HistoryError with its path."""
    with pytest.raises(HistoryError, match=r"absent\.jsonl"):
        read_history(tmp_path / "absent.jsonl")


def test_merge_histories(tmp_path: Path) -> None:
    """Several per-process files become one, ordered by start."""
    first, second, merged = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "all.jsonl"
    with HistoryWriter(first) as writer:
        for operation in SAMPLES[::2]:
            writer.record(operation)
    with HistoryWriter(second) as writer:
        for operation in SAMPLES[1::2]:
            writer.record(operation)
    assert merge_histories([first, second], merged) == len(SAMPLES)
    assert read_history(merged) == sorted(SAMPLES, key=lambda o: o.start)


def test_merge_histories_reports_bad_input(tmp_path: Path) -> None:
    """A malformed input file is named, and its line."""
    bad = write_lines(tmp_path / "bad.jsonl", ["{"])
    with pytest.raises(HistoryError, match=r"bad\.jsonl:1"):
        merge_histories([bad], tmp_path / "out.jsonl")


EVERY_TYPE: list[object] = [
    "text", "", "hex:01", '{"$bytes": "01"}', b"\x00\xff", b"", 0, 1, -(2**70), 1.0, -0.0, 0.1, 1e300, True, False,
    [], [1, 1.0, True, "1", b"1"], (), (1, (2, [3])), {}, {"a": 1, "b": [True, (1.5,)]},
    {"$bytes": "00"}, {"$tuple": [1]}, {"$dict": {"x": 1}}, {"$": 1, "$b": 2}, {"$other": b"\x01"}, [{"$tuple": "not a tag"}],
]
"""A value of every type, nested, with the 1 / 1.0 / True trio and dicts that look like tags."""


def every_operation() -> list[Operation]:
    """Each op of the history format, with values of every type where it takes one."""
    def make(**fields: object) -> Operation:
        base: dict[str, object] = {"client": "a", "key": "k", "value": None, "expected": None, "status": "ok", "start": 1, "end": 2}
        return Operation(**{**base, **fields})  # type: ignore[arg-type]

    ops = [make(op="store", value=value, result="saved") for value in EVERY_TYPE]
    ops += [make(op="get", result=value) for value in EVERY_TYPE]
    ops += [make(op="pop", result=value) for value in EVERY_TYPE] + [make(op="pop", result=None)]
    ops += [make(op="add", value=value, result=n % 2 == 0) for n, value in enumerate(EVERY_TYPE)]
    ops += [make(op="cas", value=value, expected=EVERY_TYPE[-n], result=False) for n, value in enumerate(EVERY_TYPE)]
    ops += [
        make(op="incr", value=1, result=5), make(op="incr", value=0.5, result=1.5), make(op="decr", value=2, result=-2),
        make(op="decr", value=-1.0, result=1.0), make(op="incr", value=1, status="info", end=None, result=None),
        make(op="incr", value=1, status="fail", result=None),
        make(op="store", value="v", result="updated", ttl=0.5), make(op="add", value=[1], result=True, ttl=30.0),
        make(op="expire", ttl=2.5, result=True), make(op="persist", result=False), make(op="expire", ttl=1.0, result=False),
    ]
    return ops


def test_every_value_type_and_operation_round_trips(tmp_path: Path) -> None:
    """Written then read: the same operations, each value with its own types (1, 1.0 and True stay apart)."""
    ops = every_operation()
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as writer:
        for operation in ops:
            writer.record(operation)
    back = read_history(path)
    assert len(back) == len(ops)
    for written, read in zip(ops, back, strict=True):
        assert read == written
        for name in ("value", "expected", "result"):
            assert same_value(getattr(read, name), getattr(written, name)), (name, written)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["value"] == "text" and "ttl" not in lines[0]
    assert [line["value"] for line in lines[:3]] == ["text", "", "hex:01"]  # str as it is
    assert lines[EVERY_TYPE.index(b"\x00\xff")]["value"] == {"$bytes": "00ff"}
    assert lines[EVERY_TYPE.index((1, (2, [3])))]["value"] == {"$tuple": [1, {"$tuple": [2, [3]]}]}
    assert lines[EVERY_TYPE.index({"$bytes": "00"})]["value"] == {"$dict": {"$bytes": "00"}}
    one, one_float, true = (next(n for n, v in enumerate(EVERY_TYPE) if v is not None and same_value(v, x)) for x in (1, 1.0, True))
    assert [type(lines[n]["value"]) for n in (one, one_float, true)] == [int, float, bool]
    ttl_lines = [line for line in lines if "ttl" in line]
    assert [(line["op"], line["ttl"]) for line in ttl_lines] == [("store", 0.5), ("add", 30.0), ("expire", 2.5), ("expire", 1.0)]
    assert [o.uses_expiry for o in back[-5:]] == [True] * 5 and not back[0].uses_expiry


def test_histories_written_before_any_value_types_still_read(tmp_path: Path) -> None:
    """Lines as earlier versions wrote them (str values, {"$bytes": hex}, no ttl) read as they always did."""
    lines = [
        '{"client": "a", "op": "store", "key": "k", "value": "v", "result": "saved", "status": "ok", "start": 1, "end": 2}',
        '{"client": "a", "op": "cas", "key": "k", "expected": "v", "value": {"$bytes": "0a"}, "result": true, '
        '"status": "ok", "start": 3, "end": 4}',
        '{"client": "b", "op": "get", "key": "k", "value": null, "result": {"$bytes": "0A"}, "status": "ok", "start": 5, "end": 6}',
    ]
    ops = read_history(write_lines(tmp_path / "old.jsonl", lines))
    assert [(o.value, o.expected, o.result, o.ttl) for o in ops] == [("v", None, "saved", None), (b"\n", "v", True, None),
                                                                  (None, None, b"\n", None)]
