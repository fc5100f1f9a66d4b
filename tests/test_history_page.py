"""The history page (`kvmgr check --html`): the orders the checker exposes, the page's data, and the page in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kvmgr.tools.check_bench import synthetic_history
from kvmgr.tools.processes import python_module
from kvmgr.verify.check import CheckResult, check_operations
from kvmgr.verify.history import Operation, operation_to_json
from kvmgr.verify.html import history_page, linearization_points, page_data, write_history_page
from kvmgr.verify.register import ABSENT, step

US = 1000


def op(client: str, name: str, key: str, value: object = None, result: object = None, *, start: int, end: int | None,
       status: str = "ok", expected: object = None) -> Operation:
    """An operation with times in microseconds."""
    return Operation(client=client, op=name, key=key, value=value, expected=expected, result=result, status=status,  # type: ignore[arg-type]
                     start=start * US, end=None if end is None else end * US)


LINEARIZABLE = [
    op("alice", "store", "x", "1", "saved", start=0, end=10),
    op("bob", "get", "x", None, "1", start=5, end=20),
    op("carol", "store", "x", "2", "updated", start=12, end=30),
    op("bob", "get", "x", None, "2", start=31, end=40),
    op("alice", "incr", "n", 2, 3, start=11, end=23),
    op("carol", "incr", "n", 1, 1, start=2, end=9),
    op("alice", "cas", "x", "3", True, expected="2", start=25, end=45),
    op("dave", "store", "x", "9", None, status="info", start=33, end=None),
    op("dave", "get", "x", None, "9", start=50, end=55),
]
"""Four clients, two keys, an unknown-outcome store that must have taken effect."""
ANOMALY = [
    op("alice", "store", "x", "1", "saved", start=0, end=10),
    op("bob", "get", "x", None, "1", start=5, end=20),
    op("carol", "store", "x", "2", None, start=12, end=30),
    op("bob", "get", "x", None, "1", start=31, end=40),  # a stale read: '2' was written before it was called
    op("alice", "get", "x", None, "2", start=22, end=28),
    op("carol", "incr", "y", 1, 1, start=1, end=3),
]
"""A stale read on key 'x': after store '1', get '1', the three operations from carol's store on cannot be ordered."""


def replay(initial: object, order: tuple[Operation, ...]) -> list[object]:
    """The states after each operation of an order, asserting each step is allowed."""
    state, states = initial, []
    for operation in order:
        ok, state = step(state, operation)
        assert ok, f"{operation} cannot come next in state {state!r}"
        states.append(state)
    return states


@pytest.mark.parametrize("seed", range(4))
def test_each_key_order_is_a_valid_linearization(seed: int) -> None:
    ops = synthetic_history(clients=6, operations=1500, keys=5, seed=seed)
    result = check_operations(ops, "empty", orders=True)
    assert result.linearizable and sorted(result.orders) == sorted({o.key for o in ops})
    for key, order in result.orders.items():
        completed = {id(o) for o in ops if o.key == key and o.status == "ok"}
        placed = [id(o) for o in order.order]
        assert order.complete and order.initial is ABSENT and not order.unplaced
        assert completed <= set(placed) and len(placed) == len(set(placed))
        assert all(o.key == key and o.status != "fail" for o in order.order)
        assert list(order.states) == replay(ABSENT, order.order)
        points = linearization_points(order.order)
        assert points == sorted(points)
        assert all(o.start <= p and (o.end is None or p <= o.end) for o, p in zip(order.order, points, strict=True))


def test_orders_are_kept_only_when_asked() -> None:
    assert check_operations(LINEARIZABLE, "empty").orders == {}
    assert check_operations(ANOMALY, "empty").orders == {}


def test_a_failure_keeps_the_longest_prefix_and_the_operations_that_cannot_be_placed() -> None:
    result = check_operations(ANOMALY, "empty", orders=True)
    assert result.linearizable is False and result.key == "x"
    order = result.orders["x"]
    assert not order.complete
    assert [(o.client, o.op) for o in order.order] == [("alice", "store"), ("bob", "get")]
    assert order.states == ("1", "1")
    assert order.unplaced == tuple(result.unplaced) and {id(o) for o in order.unplaced} == {id(o) for o in ANOMALY[2:5]}
    assert "y" not in result.orders  # keys after the first failing one are not checked


def test_an_unknown_outcome_store_is_placed_where_it_took_effect() -> None:
    order = check_operations(LINEARIZABLE, "empty", orders=True).orders["x"]
    info = LINEARIZABLE[7]
    assert info in order.order and order.states[order.order.index(info)] == "9"


def test_the_page_data_marks_the_unplaced_operations_and_the_keys() -> None:
    data = page_data(ANOMALY, check_operations(ANOMALY, "empty", orders=True), "t")
    assert data["outcome"] == "illegal" and data["keys"] == ["x", "y"] and data["badKey"] == 0
    assert data["keyStatus"] == ["illegal", "unchecked"]
    assert [n for n, flag in enumerate(data["ops"]["flag"]) if flag == 1] == [2, 3, 4]
    assert data["orders"]["0"]["ids"] == [0, 1] and data["orders"]["0"]["complete"] is False
    assert data["orders"]["0"]["points"] == [0, 5 * US]


def test_the_page_is_self_contained_and_its_data_cannot_break_out() -> None:
    hostile = [op("a", "store", "</script><script>alert(1)</script>", "<!--", "saved", start=0, end=1)]
    page = history_page(hostile, check_operations(hostile, "empty", orders=True), title="<b>t</b>")
    assert not re.search(r"\b(src|href)\s*=", page) and "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page and "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page
    assert page.count("</script>") == 2  # the data's and the code's, nothing from the history
    data = json.loads(re.search(r'<script type="application/json" id="history-data">(.*?)</script>', page, re.S)[1])  # type: ignore[index]
    assert data["keys"] == ["</script><script>alert(1)</script>"] and data["ops"]["args"] == ["value='<!--'"]


def kvmgr_check(*args: str) -> subprocess.CompletedProcess:
    """Run `python -m kvmgr check args`."""
    return subprocess.run(python_module("kvmgr", "check", *args), capture_output=True, text=True, timeout=120)


def write_history(path: Path, ops: list[Operation]) -> Path:
    """Write a JSON-lines history."""
    path.write_text("".join(operation_to_json(o) + "\n" for o in ops))
    return path


def test_check_html_writes_the_page_and_prints_the_same_verdict(tmp_path: Path) -> None:
    history = write_history(tmp_path / "h.jsonl", ANOMALY)
    plain = kvmgr_check("--initial", "empty", str(history))
    paged = kvmgr_check("--initial", "empty", "--html", str(tmp_path / "p.html"), str(history))
    assert (paged.returncode, paged.stdout) == (1, plain.stdout) and plain.returncode == 1
    assert f"wrote {tmp_path / 'p.html'}" in paged.stderr
    assert '"outcome":"illegal"' in (tmp_path / "p.html").read_text()


def test_check_html_refuses_several_histories_and_an_unwritable_page(tmp_path: Path) -> None:
    history = write_history(tmp_path / "h.jsonl", LINEARIZABLE)
    several = kvmgr_check("--html", str(tmp_path / "p.html"), str(history), str(history))
    assert several.returncode == 2 and "--html writes the page of one history (got 2 files)" in several.stderr
    unwritable = kvmgr_check("--html", str(tmp_path / "missing" / "p.html"), str(history))
    assert unwritable.returncode == 2
    assert unwritable.stderr.strip().splitlines()[-1] == (
        f"kvmgr check: error: cannot write the history page {tmp_path / 'missing' / 'p.html'}: No such file or directory"
    )


# ---------- in a real browser ----------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium: .ci/run installs Debian's chromium; without it the page cannot be tested in a browser"
)


@dataclass
class Rendered:
    """What headless Chromium made of a page: the body's data attributes, the DOM after the scripts ran, the log."""

    body: dict[str, str]
    dom: str
    log: str


class _Body(HTMLParser):
    """Collect the body's attributes and, per element id, its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.ops_by_parent: dict[str, list[str]] = {}
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {name: value or "" for name, value in attrs}
        if tag == "body":
            self.body = named
        if "id" in named:
            self.stack.append(named["id"])
        if "data-op" in named and self.stack:
            self.ops_by_parent.setdefault(self.stack[-1], []).append(named["data-op"])


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a profile of its own in tmp_path, no network services, logging to stderr."""
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,800",
        "--enable-logging=stderr", "--v=0", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def render(page: Path, tmp_path: Path, fragment: str = "") -> Rendered:
    """Load the page (with a #fragment) and return its DOM once its scripts ran."""
    done = chromium(tmp_path, "--dump-dom", page.as_uri() + fragment)
    assert done.returncode == 0, done.stderr[-2000:]
    parser = _Body()
    parser.feed(done.stdout)
    return Rendered(parser.body, done.stdout, done.stderr)


def screenshot(page: Path, tmp_path: Path, out: Path, fragment: str = "") -> tuple[int, int, list[bytes]]:
    """Take a screenshot of the page; return its width, height and rows of RGBA pixels."""
    done = chromium(tmp_path, f"--screenshot={out}", page.as_uri() + fragment)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return read_png(out)


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGBA or RGB, non-interlaced PNG (as Chromium writes) into rows of RGBA pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    idat = b""
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        if kind == b"IDAT":
            idat += body
        else:
            chunks[kind] = body
        offset += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and colour in (2, 6) and interlace == 0
    size = 4 if colour == 6 else 3
    raw, rows, previous = zlib.decompress(idat), [], bytearray(width * size)
    for y in range(height):
        line = raw[y * (width * size + 1):(y + 1) * (width * size + 1)]
        row = _unfilter(line[0], bytearray(line[1:]), previous, size)
        rows.append(bytes(row) if size == 4 else b"".join(bytes(row[x:x + 3]) + b"\xff" for x in range(0, len(row), 3)))
        previous = row
    return width, height, rows


def _unfilter(kind: int, row: bytearray, previous: bytearray, size: int) -> bytearray:
    """Undo one PNG row filter."""
    for x in range(len(row)):
        left = row[x - size] if x >= size else 0
        up, corner = previous[x], previous[x - size] if x >= size else 0
        if kind == 1:
            row[x] = (row[x] + left) & 0xFF
        elif kind == 2:
            row[x] = (row[x] + up) & 0xFF
        elif kind == 3:
            row[x] = (row[x] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - corner
            nearest = min((abs(p - left), 0, left), (abs(p - up), 1, up), (abs(p - corner), 2, corner))[2]
            row[x] = (row[x] + nearest) & 0xFF
    return row


def count_colour(rows: list[bytes], rgb: tuple[int, int, int]) -> int:
    """How many pixels have exactly this colour."""
    pixel = bytes(rgb) + b"\xff"
    return sum(row[x:x + 4] == pixel for row in rows for x in range(0, len(row), 4))


HIGHLIGHT_FILL = (0xFF, 0xC9, 0xCC)
"""The fill of an operation that cannot be placed (history.js, STYLE.unplaced)."""


def assert_rendered_cleanly(rendered: Rendered) -> None:
    """The page's script ran to the end and reported no error; Chromium logged no script error."""
    assert rendered.body.get("data-state") == "ready", rendered.log[-2000:]
    assert "data-errors" not in rendered.body, rendered.body.get("data-errors")
    assert "Uncaught" not in rendered.log, rendered.log[-2000:]


def page_for(ops: list[Operation], tmp_path: Path, name: str) -> tuple[Path, CheckResult]:
    """Check a history with orders and write its page."""
    result = check_operations(ops, "empty", orders=True)
    path = tmp_path / f"{name}.html"
    write_history_page(path, ops, result, title=name)
    return path, result


@needs_chromium
def test_a_linearizable_history_renders_with_its_order_and_nothing_highlighted(tmp_path: Path) -> None:
    page, _ = page_for(LINEARIZABLE, tmp_path, "linearizable")
    rendered = render(page, tmp_path, "#select=3")
    assert_rendered_cleanly(rendered)
    body = rendered.body
    assert (body["data-outcome"], body["data-highlighted"], body["data-lanes"], body["data-drawn"]) == ("ok", "", "4", "9")
    assert 'data-op="3"' in rendered.dom and "#4 of 7, point +31.0 µs" in rendered.dom  # bob's second get, 4th on key x
    parser = _Body()
    parser.feed(rendered.dom)
    assert parser.ops_by_parent["order"] == ["0", "1", "2", "3", "6", "7", "8"]  # x's order: the table lists every op placed
    width, height, rows = screenshot(page, tmp_path, tmp_path / "linearizable.png")
    assert (width, height) == (1400, 800) and count_colour(rows, HIGHLIGHT_FILL) == 0


@needs_chromium
def test_an_anomaly_renders_with_the_unplaced_operations_highlighted(tmp_path: Path) -> None:
    page, result = page_for(ANOMALY, tmp_path, "anomaly")
    rendered = render(page, tmp_path)
    assert_rendered_cleanly(rendered)
    unplaced = sorted(ANOMALY.index(o) for o in result.unplaced)
    assert rendered.body["data-outcome"] == "illegal"
    assert rendered.body["data-highlighted"].split() == [str(n) for n in unplaced] == ["2", "3", "4"]
    parser = _Body()
    parser.feed(rendered.dom)
    assert parser.ops_by_parent["highlighted"] == ["2", "3", "4"]
    assert rendered.body["data-drawn"] == "5"  # opened on the offending key: y's one operation is filtered out
    _, _, rows = screenshot(page, tmp_path, tmp_path / "anomaly.png")
    assert count_colour(rows, HIGHLIGHT_FILL) > 3 * 2000  # three bars, each well over 2,000 pixels of highlight


@needs_chromium
def test_the_filters_come_from_the_address(tmp_path: Path) -> None:
    page, _ = page_for(LINEARIZABLE, tmp_path, "filtered")
    rendered = render(page, tmp_path, "#key=x&clients=alice,bob&axis=time")
    assert_rendered_cleanly(rendered)
    assert (rendered.body["data-lanes"], rendered.body["data-drawn"]) == ("2", "4")  # alice's store and cas, bob's two gets


@needs_chromium
def test_ten_thousand_operations_render_without_errors(tmp_path: Path) -> None:
    ops = synthetic_history(clients=8, operations=10_000, keys=16, seed=3)
    page, result = page_for(ops, tmp_path, "large")
    assert result.linearizable and len(result.orders) == 16
    rendered = render(page, tmp_path)
    assert_rendered_cleanly(rendered)
    assert (rendered.body["data-lanes"], rendered.body["data-drawn"]) == ("8", "10000")
    one_key = render(page, tmp_path, "#key=k3&clients=c0,c1")
    assert_rendered_cleanly(one_key)
    expected = sum(o.key == "k3" and o.client in ("c0", "c1") for o in ops)
    assert one_key.body["data-lanes"] == "2" and one_key.body["data-drawn"] == str(expected)


PROBE = """
<script>
(function () {
  // Play a person: point along alice's lane, click the bar whose tooltip says it cannot be placed, step back through the
  // order, zoom with the wheel, then show every key. Report what the page showed.
  const canvas = document.getElementById("canvas"), tip = document.getElementById("tooltip");
  const box = canvas.getBoundingClientRect(), y = box.top + 30 + 9, seen = [];
  const mouse = (type, x) => canvas.dispatchEvent(new MouseEvent(type, { bubbles: true, clientX: x, clientY: y }));
  let target = -1;
  for (let x = box.left + 130; x < box.right; x += 4) {
    mouse("mousemove", x);
    if (!tip.hidden && !seen.includes(tip.textContent)) seen.push(tip.textContent);
    if (!tip.hidden && tip.textContent.includes("cannot be placed") && target < 0) target = x;
  }
  mouse("mousedown", target); mouse("mouseup", target);
  const clicked = document.getElementById("details-list").dataset.op;
  document.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowLeft", bubbles: true }));
  const stepped = document.getElementById("details-list").dataset.op;
  canvas.dispatchEvent(new WheelEvent("wheel", { bubbles: true, cancelable: true, clientX: target, clientY: y, deltaY: -400 }));
  const keys = document.getElementById("key-filter");
  keys.value = "-1"; keys.dispatchEvent(new Event("change"));
  document.body.dataset.probe = JSON.stringify({ seen, clicked, stepped, counts: document.getElementById("counts").textContent });
})();
</script>
</body>"""


@needs_chromium
def test_pointing_clicking_stepping_zooming_and_filtering_work_in_the_browser(tmp_path: Path) -> None:
    page, _ = page_for(ANOMALY, tmp_path, "probe")
    page.write_text(page.read_text().replace("</body>", PROBE, 1))
    rendered = render(page, tmp_path)
    assert_rendered_cleanly(rendered)
    probe = json.loads(rendered.body["data-probe"])
    assert [tip.splitlines()[0] for tip in probe["seen"]] == ["alice: store \"x\" value='1' → 'saved'", "alice: get \"x\" → '2'"]
    assert "cannot be placed" in probe["seen"][1] and "key before: absent; after: '1'" in probe["seen"][0]
    assert (probe["clicked"], probe["stepped"]) == ("4", "1")  # alice's get; back from it: the prefix's last, bob's get
    assert probe["counts"] == "6 of 6 operations, 3 of 3 clients"
