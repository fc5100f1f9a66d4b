"""Recording and reading JSON-lines histories, and rejecting malformed ones."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kvmgr.errors import HistoryError
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
    assert encode_value(bytearray(b"\x01")) == b"\x01" and encode_value(memoryview(b"\x02")) == b"\x02"
    assert encode_value("plain") == "plain"
    assert encode_value(None) is None
    with pytest.raises(TypeError):
        encode_value(12)  # type: ignore[arg-type]
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
    (json.dumps({**GOOD, "op": "put"}), "'op' must be one of store, get, delete, cas"),
    (json.dumps({**GOOD, "status": "maybe"}), "'status' must be one of ok, fail, info"),
    (json.dumps({**GOOD, "status": "info", "result": None}), "'end' must be null when status is info"),
    (json.dumps({**GOOD, "status": "info", "end": None}), "'result' must be null when status is info"),
    (json.dumps({**GOOD, "end": 1000}), "'end' (1000) is before 'start' (1712)"),
    (json.dumps({**GOOD, "result": "stored"}), "'result' of store must be \"saved\", \"updated\" or null (not recorded)"),
    (json.dumps({**GOOD, "op": "get", "value": None, "result": 5}), """'result' of get must be a string or {"$bytes": "<hex>"} or null"""),
    (json.dumps({**GOOD, "op": "delete", "value": None, "result": "yes"}), "'result' of delete must be true or false"),
    (json.dumps({**GOOD, "op": "cas", "expected": None, "result": None}), "'result' of cas must be true or false"),
    (json.dumps({**GOOD, "op": "cas"}), "missing field 'expected'"),
    (json.dumps({**GOOD, "expected": "v0"}), "'expected' is only for cas"),
    (json.dumps({**GOOD, "op": "get", "result": None}), "'value' must be null for get"),
    (json.dumps({**GOOD, "value": None}), "'value' must be a string"),
    (json.dumps({**GOOD, "client": 7}), "'client' must be a string"),
    (json.dumps({**GOOD, "key": ""}), "'key' must not be empty"),
    (json.dumps({**GOOD, "colour": "red"}), "unknown field \"colour\""),
    (json.dumps({**GOOD, "value": 5}), """'value' must be a string or {"$bytes": "<hex>"} (got 5)"""),
    (json.dumps({**GOOD, "value": ["a"]}), """'value' must be a string or {"$bytes": "<hex>"}"""),
    (json.dumps({**GOOD, "value": {"a": "b"}}), """'value' must be a string or {"$bytes": "<hex>"}"""),
    (json.dumps({**GOOD, "value": {"$bytes": "00", "x": 1}}), """'value' must be a string or {"$bytes": "<hex>"}"""),
    (json.dumps({**GOOD, "value": {"$bytes": "zz"}}), """'value': "$bytes" must be hex digits in pairs (got "zz")"""),
    (json.dumps({**GOOD, "value": {"$bytes": "abc"}}), """'value': "$bytes" must be hex digits in pairs"""),
    (json.dumps({**GOOD, "value": {"$bytes": "0 1"}}), """'value': "$bytes" must be hex digits in pairs"""),
    (json.dumps({**GOOD, "value": {"$bytes": 1}}), """'value': "$bytes" must be hex digits in pairs (got 1)"""),
    (json.dumps({**GOOD, "value": {"$base64": "AA=="}}), """'value' has an unknown tag "$base64" (known: "$bytes")"""),
    (json.dumps({**GOOD, "value": {"$dict": {"$bytes": "00"}}}), "'value': dict values are not supported yet"),
    (json.dumps({**GOOD, "op": "cas", "expected": {"$bytes": "x"}, "result": True}), """'expected': "$bytes" must be hex"""),
    (json.dumps({**GOOD, "op": "get", "value": None, "result": {"$bytes": "0g"}}), """'result': "$bytes" must be hex"""),
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
    path = write_lines(tmp_path / "history.jsonl", [json.dumps({**GOOD, "value": ["x" * 100_000]})])
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
