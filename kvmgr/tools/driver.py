"""The driver: start a server, run a scenario with every actor as its own OS process, verify shutdown, report.

Exit status: 0 every row passed, 1 a row failed, 2 bad usage or an invalid scenario file,
3 the server could not be started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode, urlsplit, urlunsplit

import psutil
from tabulate import tabulate

from kvmgr.config import DEFAULT_TIMEOUT, is_redis_url
from kvmgr.errors import EXIT_NEGATIVE, EXIT_OK, ConfigError, KvmgrError, exit_status
from kvmgr.protocol.values import ValueRuleError, from_json, is_number, same_value, to_json
from kvmgr.tools.actor import UNSAFE_INCREMENT
from kvmgr.tools.arguments import positive_float, writable_path
from kvmgr.tools.cleanup import delete_run_namespace
from kvmgr.tools.processes import ProcessGroup, ServerProcess, child_environment, interrupt_on_terminate, python_module, read_line, reap
from kvmgr.tools.scenarios import Scenario, Step, find_scenario, load_scenario, notation, seed_scenario_path
from kvmgr.verify.check import CHECK_TIMEOUT, check_operations
from kvmgr.verify.history import read_history

ACTOR_SLACK = 10.0  # beyond its own timeouts (a barrier, a call, a reconnect), how long an actor may take to answer
CALL_ALLOWANCE = 0.005  # and for a repeated step, how long each further call may take on a busy machine
SERVER_TROUBLE = ("ServerUnavailable", "OutcomeUnknown", "ActorFailed")  # outcomes after which the server is probed
SHUTDOWN_TIMEOUT = 2.0
SHUTDOWN_CHECKS = ("server exits with status 0", "server leaves no child processes", "server stops listening")
HEADERS = ("step", "actor(s)", "operation", "key", "value", "expected", "actual", "result")


@dataclass
class Row:
    """One line of the results table."""

    step: str
    actors: str
    operation: str
    key: str
    value: str
    expected: str
    actual: str
    passed: bool | None  # None: skipped

    @property
    def verdict(self) -> str:
        """PASS, FAIL or SKIP."""
        return "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"

    def cells(self) -> list[str]:
        """The row as table cells."""
        return [self.step, self.actors, self.operation, self.key, self.value, self.expected, self.actual, self.verdict]


@dataclass
class ActorOutcome:
    """What one actor process reported (start and end: time.monotonic_ns() around its call; version: a wait's)."""

    actor: str
    status: str
    result: Any = None
    error: str | None = None
    message: str = ""
    start: int | None = None
    end: int | None = None
    version: int | None = None

    @property
    def seconds(self) -> float | None:
        """How long the call took (after the barrier), if the actor said."""
        return None if self.start is None or self.end is None else (self.end - self.start) / 1e9

    def text(self) -> str:
        """The outcome as a table cell: the result in JSON notation, or `error NAME: message`."""
        if self.status == "ok":
            return notation(self.result)
        return f"error {self.error}: {self.message}" if self.message else f"error {self.error}"


REQUEST_FIELDS = ("by", "ttl", "repeat", "lock", "queue", "lease", "timeout", "after")
"""Step fields passed to the actor as they are, when given."""


def step_request(step: Step, actor: str, namespace: str = "driver", group: tuple[Step, ...] | None = None) -> dict[str, Any]:
    """What one actor is asked to do for one step (the flags of `python -m kvmgr.client`, as JSON; values in JSON form).

    `group` is the steps run at the same moment as this one (with_next): all their actors meet at one barrier.
    """
    request: dict[str, Any] = {"op": step.op, "key": step.key, "value": _json_form(step.value_for(actor))}
    if step.op == "cas":
        request.update(absent=step.absent, expected=_json_form(step.expected))
    if step.keys is not None:
        request["pairs"] = json.dumps(list(step.keys))
    if step.pairs is not None:
        request["pairs"] = json.dumps(to_json(step.pairs))
    request.update({name: getattr(step, name) for name in REQUEST_FIELDS if getattr(step, name) is not None})
    if step.until_empty:
        request["until_empty"] = True
    group = group or (step,)
    parties = sum(len(member.actors) for member in group)
    if parties > 1:
        request.update(barrier=f"{namespace}-step-{group[0].number}", parties=parties)
    return request


def _json_form(value: Any) -> Any:
    return None if value is None else to_json(value)


def read_request(key: str) -> dict[str, Any]:
    """What an actor is asked to do to read a key's state before or after a step."""
    return {"op": "get", "key": key}


class Actors:
    """One long-lived OS process per actor (`python -m kvmgr.client --name NAME --session`), fed a step at a time.

    Each records its operations in its own history file; a step's actors get their requests before any of
    them answers, and the server-hosted barrier makes them fire together. Barrier names carry a random run
    id, so runs sharing a server never meet at each other's barriers. Once the server stops answering (or
    an actor is gone), the steps it would take are failed at once as "not run" instead of timing out one by one.
    """

    def __init__(
        self, group: ProcessGroup, endpoint: ServerProcess | Endpoint, history_dir: Path, timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.group, self.endpoint, self.history_dir, self.timeout = group, endpoint, history_dir, timeout
        self.processes: dict[str, psutil.Popen] = {}
        self.namespace = f"driver-{uuid.uuid4().hex[:12]}"
        self.unavailable: str | None = None  # why the server was given up on, once it was

    def start(self, names: Iterable[str]) -> None:
        """Launch the actors that are not running yet (all at once, so their start-ups overlap)."""
        for name in names:
            if name not in self.processes:
                argv = python_module("kvmgr.tools.actor", f"--name={name}", "--address", self.endpoint.address_text, "--session",
                                     "--timeout", str(self.timeout), "--history", str(self.history_dir / f"{name}.jsonl"))
                self.processes[name] = self.group.launch(argv, child_environment(self.endpoint.authkey), stdin=True)

    def run(self, step: Step) -> list[ActorOutcome]:
        """Send the step to each of its actors and collect what each reported; probe the server if one had trouble."""
        return self.run_together((step,))[0]

    def run_together(self, group: tuple[Step, ...]) -> list[list[ActorOutcome]]:
        """Run steps at one moment (their actors meet at one barrier): each step's outcomes, in the group's order."""
        actors = [actor for step in group for actor in step.actors]
        self.start(actors)
        reason = self.unavailable or self._gone(actors)
        if reason is not None:
            return [[ActorOutcome(actor, "error", error="NotRun", message=reason) for actor in step.actors] for step in group]
        for step in group:
            for actor in step.actors:
                self._send(actor, step_request(step, actor, self.namespace, group))
        within = max(self.answer_within(step.calls, step.timeout) for step in group)
        deadline = time.monotonic() + within
        outcomes = [[self._receive(actor, deadline, within) for actor in step.actors] for step in group]
        if any(outcome.error in SERVER_TROUBLE for step_outcomes in outcomes for outcome in step_outcomes):
            self.unavailable = self._probe(group[0])
        return outcomes

    def kill(self, actor: str) -> int | None:
        """SIGKILL the actor (kill -9) and wait for it; its exit status. It is started again for its next step."""
        process = self.processes.pop(actor)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
        try:
            return cast("int | None", process.wait(timeout=SHUTDOWN_TIMEOUT))
        except psutil.TimeoutExpired:
            return None

    def read(self, actor: str, key: str) -> ActorOutcome:
        """The key's state as the actor reads it (a recorded get): its value, or error KeyNotFound when absent."""
        self.start([actor])
        reason = self.unavailable or self._gone([actor])
        if reason is not None:
            return ActorOutcome(actor, "error", error="NotRun", message=reason)
        self._send(actor, read_request(key))
        return self._receive(actor, time.monotonic() + self.answer_within(), self.answer_within())

    def answer_within(self, calls: int = 1, waits: float | None = None) -> float:
        """The longest the driver waits for an actor's answer to a step: its barrier, its calls (a blocking one
        waiting `waits` seconds, its step's timeout) and a reconnect."""
        return 3 * self.timeout + ACTOR_SLACK + (calls - 1) * CALL_ALLOWANCE + (waits or 0.0)

    def _gone(self, actors: Iterable[str]) -> str | None:
        """Why a step cannot run because one of its actors is no longer running, or None."""
        statuses = {actor: self.processes[actor].poll() for actor in actors}
        gone = [f"actor {actor} exited with status {status}" for actor, status in statuses.items() if status is not None]
        return ", ".join(gone) or None

    def _probe(self, step: Step) -> str | None:
        """None if the server answers a fresh connection within the timeout, else why the remaining steps are not run."""
        from kvmgr.client import connect

        authkey = self.endpoint.authkey.encode() if self.endpoint.authkey else None
        try:
            with connect(self.endpoint.address_text, authkey=authkey, timeout=self.timeout, name="driver-probe") as client:
                client.size()
        except KvmgrError as exc:
            return f"the server stopped answering at step {step.number} ({type(exc).__name__}: {exc})"
        return None

    def _send(self, actor: str, request: dict[str, Any]) -> None:
        """Write one request line to the actor (a broken pipe shows up as the actor's failure in _receive)."""
        with contextlib.suppress(OSError):  # an actor that died is reported by _receive
            self.processes[actor].stdin.write(json.dumps(request).encode() + b"\n")
            self.processes[actor].stdin.flush()

    def _receive(self, actor: str, deadline: float, within: float) -> ActorOutcome:
        process = self.processes[actor]
        line = read_line(process, deadline)
        if line is None:
            if time.monotonic() >= deadline:
                reap(process)  # a wedged actor: later steps that need it fail at once
                return ActorOutcome(actor, "error", error="ActorFailed", message=f"no answer within {within:g}s")
            with contextlib.suppress(psutil.TimeoutExpired):
                process.wait(timeout=SHUTDOWN_TIMEOUT)  # its output ended: it is exiting
            reason = f"exited with status {process.poll()}"
            return ActorOutcome(actor, "error", error="ActorFailed", message=f"{reason}: {_last_error(process)}")
        try:
            report = json.loads(line)
            result = None if report.get("result") is None else from_json(report["result"])
        except (json.JSONDecodeError, ValueRuleError):
            return ActorOutcome(actor, "error", error="ActorFailed", message=f"not a JSON outcome: {line[:80]!r}")
        return ActorOutcome(
            actor, report["status"], result, report.get("error"), report.get("message", ""),
            report.get("start"), report.get("end"), report.get("version"),
        )

    def finish(self) -> None:
        """Close every actor's stdin so it exits (the process group reaps any that do not)."""
        for process in self.processes.values():
            with contextlib.suppress(OSError):
                process.stdin.close()
        for process in self.processes.values():
            with contextlib.suppress(psutil.TimeoutExpired):
                process.wait(timeout=SHUTDOWN_TIMEOUT)


def _last_error(process: psutil.Popen) -> str:
    if process.poll() is None:
        return ""
    lines = process.stderr.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else ""


@dataclass
class LockLedger:
    """What the driver saw of the run's locks: the last fencing token granted per lock, and the holders it killed."""

    tokens: dict[str, int] = field(default_factory=dict)
    killed: dict[str, tuple[str, int]] = field(default_factory=dict)  # lock -> (actor, time.monotonic_ns() of the SIGKILL)

    def grant(self, lock: str, outcome: ActorOutcome) -> tuple[bool, list[str]]:
        """Note a grant: whether its token is above every earlier one of that lock, and what its row should say."""
        token, previous = outcome.result, self.tokens.get(lock)
        grew = isinstance(token, int) and (previous is None or token > previous)
        notes = [] if grew else [f"token not above {previous}, the one granted before"]
        if isinstance(token, int):
            self.tokens[lock] = max(token, previous or token)
        if lock in self.killed and outcome.end is not None:
            victim, killed_at = self.killed.pop(lock)
            notes.append(f"granted {(outcome.end - killed_at) / 1e9:.3f}s after {victim} was killed holding it")
        return grew, notes


Kills = dict[tuple[int, str], tuple[int | None, int]]
"""(step number, actor) -> (its exit status after the SIGKILL, time.monotonic_ns() when it was sent)."""


def run_group(actors: Actors, group: tuple[Step, ...], ledger: LockLedger) -> list[Row]:
    """Run one step, or steps joined by with_next at one moment, and judge each; kill the holders of `kill = true` locks."""
    if len(group) == 1 and group[0].final is not None:
        return run_step(actors, group[0])
    outcomes = actors.run_together(group)
    kills: Kills = {}
    for step, step_outcomes in zip(group, outcomes, strict=True):
        for outcome in step_outcomes if step.kill else ():
            if outcome.status == "ok":  # it holds the lock: kill -9 it
                killed_at = time.monotonic_ns()
                kills[(step.number, outcome.actor)] = (actors.kill(outcome.actor), killed_at)
    rows = [row for step, step_outcomes in zip(group, outcomes, strict=True) for row in judge(step, step_outcomes, ledger, kills)]
    for step in group:
        for (number, actor), (_, killed_at) in kills.items():
            if number == step.number and step.lock is not None:
                ledger.killed[step.lock] = (actor, killed_at)
    return rows


def run_step(actors: Actors, step: Step) -> list[Row]:
    """Run one step and judge it: a row per actor, or for a final-state expectation one row for the step."""
    if step.final is None:
        return judge(step, actors.run(step))
    assert step.key is not None  # the loader requires a key for a final state
    before = actors.read(step.actors[0], step.key) if step.op in COUNTING_OPERATIONS else None
    outcomes = actors.run(step)
    final = actors.read(step.actors[0], step.key)
    return [judge_final(step, outcomes, final, before)]


COUNTING_OPERATIONS = {UNSAFE_INCREMENT: 1, "incr": 1, "decr": -1}
"""The operations that count, and which way (times `by`): their row says how many updates were lost."""


def judge_final(step: Step, outcomes: list[ActorOutcome], final: ActorOutcome, before: ActorOutcome | None = None) -> Row:
    """One row for a step judged by the key's final state (read after every actor finished): PASS when every call
    succeeded and the final value meets the expectation."""
    failed = [f"{o.actor}: {o.text()}" for o in outcomes if o.status != "ok"]
    value = _state(final)
    if failed:
        actual, passed = "; ".join(failed), False
    elif isinstance(value, ActorOutcome):
        actual, passed = f"final read failed: {value.text()}", False
    else:
        actual = "absent" if value is None else notation(value) + lost_updates(step, value, before)
        passed = step.final is not None and step.final.accepts(value)
    operation = step.op + (f" x{step.calls} each" if step.repeat is not None else "")
    return Row(
        str(step.number), ", ".join(step.actors), operation, step.key or "", _arguments_cell(step), step.describe_expectation(),
        actual, passed,
    )


def _state(read: ActorOutcome) -> Any:
    """A key's value from an actor's read: the value, None if absent, or the outcome itself if the read failed."""
    if read.status == "ok":
        return read.result
    return None if read.error == "KeyNotFound" else read


def lost_updates(step: Step, final: Any, before: ActorOutcome | None) -> str:
    """For a counting step, how many of its updates the final value is missing: ` (258 of 1000 updates lost)`."""
    start = None if before is None else _state(before)
    start = 0 if start is None else start
    if step.op not in COUNTING_OPERATIONS or not is_number(final) or not is_number(start):
        return ""
    delta = COUNTING_OPERATIONS[step.op] * (1 if step.by is None else step.by)
    updates = step.calls * len(step.actors)
    if not delta:
        return ""
    lost = (start + delta * updates - final) / delta
    lost_text = f"{round(lost):,}" if isinstance(delta, int) or float(lost).is_integer() else f"{lost:g}"
    return " (no update lost)" if lost == 0 else f" ({lost_text} of {updates:,} updates lost)"


def _arguments_cell(step: Step, actor: str | None = None) -> str:
    """The value cell: the step's value (as the actor sends it, {actor} replaced), by, ttl, lease, timeout and after."""
    parts = [] if step.value is None else [_cell(step.value if actor is None else step.value_for(actor))]
    parts += [f"{name} {notation(getattr(step, name))}" for name in ("by", "ttl", "lease", "timeout") if getattr(step, name) is not None]
    return ", ".join(parts + ([] if step.after is None else [f"after {step.after}"]))


def _operation_cell(step: Step) -> str:
    return step.op + (" until empty" if step.until_empty else "")


def judge(step: Step, outcomes: list[ActorOutcome], ledger: LockLedger | None = None, kills: Kills | None = None) -> list[Row]:
    """A row per actor (one for the step with expect_together): PASS when its outcome meets the step's expectation."""
    if step.expect_kind == "expect_together":
        return [judge_together(step, outcomes)]
    results = {json.dumps(to_json(o.result), sort_keys=True) for o in outcomes if o.status == "ok"}
    same = not step.same_result or (len(results) == 1 and all(o.status == "ok" for o in outcomes))
    grants = _grants(step, outcomes, ledger)
    rows = []
    for outcome in outcomes:
        if step.expect_kind == "expect_error":
            passed = outcome.status == "error" and outcome.error == step.expect
        else:
            passed = outcome.status == "ok" and step.accepts(outcome.result) and same
        granted, notes = grants.get(outcome.actor, (True, []))
        killed, kill_notes = _kill_verdict(step, outcome, kills or {})
        passed = passed and granted and killed and _in_time(step, outcome)
        actual = "; ".join([_outcome_text(step, outcome), *notes, *kill_notes])
        rows.append(Row(
            str(step.number), _actors_cell(step, outcome.actor), _operation_cell(step), step.subject,
            _arguments_cell(step, outcome.actor), step.describe_expectation(),
            actual + (" (actors disagree)" if step.same_result and len(results) > 1 else ""), passed,
        ))
    return rows


def _grants(step: Step, outcomes: list[ActorOutcome], ledger: LockLedger | None) -> dict[str, tuple[bool, list[str]]]:
    """For a lock step, each grant checked against the ledger in the order granted: (token grew, notes) per actor."""
    if step.op != "lock" or ledger is None or step.lock is None:
        return {}
    granted = sorted((o for o in outcomes if o.status == "ok"), key=lambda o: o.end or 0)
    return {outcome.actor: ledger.grant(step.lock, outcome) for outcome in granted}


def _kill_verdict(step: Step, outcome: ActorOutcome, kills: Kills) -> tuple[bool, list[str]]:
    """Whether an actor the step had killed died of the SIGKILL, and what its row says of it."""
    if (step.number, outcome.actor) not in kills:
        return True, []
    status, _ = kills[(step.number, outcome.actor)]
    if status == -signal.SIGKILL:
        return True, ["then killed -9 holding it"]
    return False, [f"not killed by -9 (exit status {status})"]


def _in_time(step: Step, outcome: ActorOutcome) -> bool:
    return step.within is None or (outcome.seconds is not None and outcome.seconds <= step.within)


BLOCKING_STEPS = ("lock", "wait", "qget")


def _outcome_text(step: Step, outcome: ActorOutcome) -> str:
    """An outcome's cell: as text() shows it, a lock's result as its token, and how long a blocking call waited."""
    if outcome.status != "ok" or step.op not in BLOCKING_STEPS:
        return outcome.text()
    text = f"token {outcome.result}" if step.op == "lock" else outcome.text()
    if outcome.version is not None:
        text += f" (version {outcome.version})"
    return text + ("" if outcome.seconds is None else f", waited {outcome.seconds:.3f}s")


def judge_together(step: Step, outcomes: list[ActorOutcome]) -> Row:
    """One row for an expect_together step: PASS when every call succeeded and what the actors got, pooled, is exactly
    the expected items, each once (in any order)."""
    failed = [f"{o.actor}: {o.text()}" for o in outcomes if o.status != "ok"]
    got = {o.actor: _items(step, o.result) for o in outcomes if o.status == "ok"}
    missing, extra = _difference(step.expect, [item for items in got.values() for item in items])
    parts = failed or [f"{actor} got {', '.join(_cell_of(item) for item in items) or 'nothing'}" for actor, items in got.items()]
    if missing:
        parts.append("never got " + ", ".join(map(_cell_of, missing)))
    if extra:
        parts.append("got more than once or not expected " + ", ".join(map(_cell_of, extra)))
    return Row(
        str(step.number), ", ".join(step.actors), _operation_cell(step), step.subject, _arguments_cell(step),
        step.describe_expectation(), "; ".join(parts), not failed and not missing and not extra,
    )


def _items(step: Step, result: Any) -> list[Any]:
    """What one actor got in a step: every item of an until_empty qget, else its one result."""
    return list(result) if step.until_empty and isinstance(result, list) else [result]


def _difference(expected: list[Any], got: list[Any]) -> tuple[list[Any], list[Any]]:
    """(expected items nobody got, items got beyond the expected ones): values compared with types."""
    extra = list(got)
    missing = []
    for item in expected:
        match = next((index for index, candidate in enumerate(extra) if same_value(item, candidate)), None)
        if match is None:
            missing.append(item)
        else:
            del extra[match]
    return missing, extra


def _cell_of(value: Any) -> str:
    return notation(to_json(value)) if value is not None else "null"


def _actors_cell(step: Step, actor: str) -> str:
    if len(step.actors) == 1:
        return actor
    return f"{actor} (with {', '.join(a for a in step.actors if a != actor)})"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else notation(to_json(value))


def check_shutdown(server: ServerProcess, children: list[psutil.Process], wait: float = SHUTDOWN_TIMEOUT) -> list[Row]:
    """Rows proving the server exited with status 0 (within `wait` seconds), left no children and no longer listens."""
    try:
        status = server.process.wait(timeout=wait)
    except psutil.TimeoutExpired:
        status = None
    leftover = [child.pid for child in children if child.is_running()]
    listening = is_listening(server.address)
    exit_text = f"exit {status}" if status is not None else f"still running after {wait:g}s"
    listen_text = "listening" if listening else "not listening"
    return [
        _check_row(SHUTDOWN_CHECKS[0], "0", exit_text, status == 0),
        _check_row(SHUTDOWN_CHECKS[1], "none", ", ".join(map(str, leftover)) or "none", not leftover),
        _check_row(f"{SHUTDOWN_CHECKS[2]} on {server.address_text}", "not listening", listen_text, not listening),
    ]


def _check_row(what: str, expected: str, actual: str, passed: bool) -> Row:
    return Row("shutdown", "driver", what, "", "", expected, actual, passed)


def is_listening(address: Any) -> bool:
    """True if some process on this machine listens on address (a TCP (host, port) or a Unix socket path)."""
    if isinstance(address, str):
        return any(c.laddr == address for c in psutil.net_connections(kind="unix"))
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == address[1]
        for c in psutil.net_connections(kind="tcp")
    )


@dataclass
class Report:
    """The outcome of one scenario run."""

    scenario: str
    path: str
    rows: list[Row]
    seconds: float

    @property
    def passed(self) -> bool:
        """True when no row failed (skipped rows do not count)."""
        return all(row.passed is not False for row in self.rows)

    def table(self) -> str:
        """The results table."""
        return tabulate([row.cells() for row in self.rows], headers=HEADERS, disable_numparse=True)  # 1.0 stays 1.0

    def to_json(self) -> str:
        """The machine-readable report."""
        rows = [dict(asdict(row), result=row.verdict) for row in self.rows]
        document = {"scenario": self.scenario, "file": self.path, "passed": self.passed, "seconds": round(self.seconds, 3), "rows": rows}
        return json.dumps(document, indent=2)


@dataclass(frozen=True)
class Endpoint:
    """Where actors connect and the authkey they get through the environment (None for Redis)."""

    address_text: str
    authkey: str | None = None


def run_scenario(
    scenario: Scenario, server_address: str = "127.0.0.1:0", target: str | None = None, timeout: float = DEFAULT_TIMEOUT,
    html: Path | None = None,
) -> Report:
    """Run every step against a server of our own (or a Redis target), then check the history and the shutdown.

    `timeout` bounds each actor's calls and barrier waits (and the driver's probe of a server that stopped answering).
    On a target the scenario runs in a namespace of its own, deleted when the run ends, however it ends. Given `html`,
    the history is also written there as a page (kvmgr.verify.html).
    """
    started = time.monotonic()
    with ProcessGroup() as group, tempfile.TemporaryDirectory(prefix="kvmgr-driver-") as scratch:
        history_dir = Path(scratch)
        if target is None:
            rows = run_against_own_server(group, scenario, server_address, history_dir, timeout)
        else:
            namespace = f"driver-{uuid.uuid4().hex[:12]}"
            try:
                rows = run_against_target(group, scenario, Endpoint(namespaced_url(target, namespace)), history_dir, timeout)
            finally:
                group.reap_all()  # no actor writes once the namespace goes
                delete_run_namespace("run_driver.py", target, namespace, timeout)
        shutdown = next((index for index, row in enumerate(rows) if row.step == "shutdown"), len(rows))
        rows.insert(shutdown, check_history(history_dir, html, scenario.name))  # the history row, before the shutdown checks
    return Report(scenario.name, scenario.path, rows, time.monotonic() - started)


def namespaced_url(url: str, namespace: str) -> str:
    """The Redis URL with ?namespace= added, so every actor sees only the run's own keys, locks, queues and barriers."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="&".join(filter(None, [parts.query, urlencode({"namespace": namespace})]))))


def run_against_own_server(
    group: ProcessGroup, scenario: Scenario, server_address: str, history_dir: Path, timeout: float = DEFAULT_TIMEOUT,
) -> list[Row]:
    """Start a server, run the steps until one quits it (or quit it at the end), check history and shutdown."""
    rows: list[Row] = []
    server = group.start_server(server_address)
    actors = Actors(group, server, history_dir, timeout)
    actors.start(scenario.actors)
    children: list[psutil.Process] = []
    ledger = LockLedger()
    for together in scenario.groups():
        step = together[0]
        if step.op == "quit":
            children = _children(server)
        rows += run_group(actors, together, ledger)
        if step.op == "quit" and any(row.passed for row in rows[-len(step.actors):]):
            break
    else:
        children = _children(server)
        closing = _closing_quit(len(scenario.steps) + 1)
        rows += judge(closing, actors.run(closing))
    actors.finish()
    return rows + check_shutdown(server, children, 0 if actors.unavailable else SHUTDOWN_TIMEOUT)


def _children(server: ServerProcess) -> list[psutil.Process]:
    """The server's child processes now (none if it is already gone)."""
    try:
        return server.process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def run_against_target(
    group: ProcessGroup, scenario: Scenario, endpoint: Endpoint, history_dir: Path, timeout: float = DEFAULT_TIMEOUT,
) -> list[Row]:
    """Run the steps against a Redis target; quitting it and the shutdown checks are shown as skipped."""
    rows: list[Row] = []
    actors = Actors(group, endpoint, history_dir, timeout)
    actors.start(scenario.actors)
    ledger = LockLedger()
    for together in scenario.groups():
        step = together[0]
        if step.op == "quit":
            rows += [_skipped_row(str(step.number), actor, "quit", "kvmgr's own server only") for actor in step.actors]
        else:
            rows += run_group(actors, together, ledger)
    actors.finish()
    return rows + [_skipped_row("shutdown", "driver", what, "kvmgr's own server only") for what in SHUTDOWN_CHECKS]


def _skipped_row(step: str, actor: str, operation: str, reason: str) -> Row:
    return Row(step, actor, operation, "", "", "", f"skipped: {reason}", None)


def check_history(history_dir: Path, html: Path | None = None, title: str = "") -> Row:
    """A row saying whether what the actors recorded is linearizable (keys given an expiry are left out, and named);
    given `html`, the history is written there as a page too."""
    operations = [op for path in sorted(history_dir.glob("*.jsonl")) for op in read_history(path)]
    result = check_operations(operations, initial="empty", timeout=CHECK_TIMEOUT, orders=html is not None)  # keys start absent
    if html is not None:
        from kvmgr.verify.html import write_history_page

        write_history_page(html, operations, result, title=f"run_driver.py --scenario {title}")
    checked = sum(op.key not in result.skipped_keys for op in operations)
    shown = {True: f"yes ({checked} operations)", False: f"NO: key {result.key}", None: f"unknown: {result.detail}"}
    actual = shown[result.linearizable] + (f"; {result.skipped_note}" if result.skipped_keys else "")
    return Row("history", "driver", "linearizable", result.key or "", "", "yes", actual, result.linearizable is True)


def _closing_quit(number: int) -> Step:
    return Step(number, "driver quits the server", ("driver",), "quit", expect="Server Quitting..!")


def prepare_target(target: str, flush: bool) -> None:
    """Check that the Redis target is reachable (emptying it first only when asked: the run needs no empty database)."""
    if not is_redis_url(target):
        raise ConfigError(f"--target must be a redis:// URL (got {target!r})")
    from kvmgr.client.redis_transport import connect_redis

    with connect_redis(target) as client:
        if flush:
            client.flush()


def build_parser() -> argparse.ArgumentParser:
    """The run_driver.py argument parser."""
    parser = argparse.ArgumentParser(
        prog="run_driver.py", description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--scenario", default=None, metavar="FILE|NAME",
        help="a scenario TOML file, or the name of a shipped one (seed, counter, coordination; a file of that name comes first); "
        "default: the shipped seed scenario",
    )
    parser.add_argument("--address", default="127.0.0.1:0", help="where the driver's server listens (default: a free loopback port)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable report instead of the table")
    parser.add_argument(
        "--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="bound on each actor's call and barrier wait (default %(default)s); once the server stops answering, "
        "the remaining steps fail at once",
    )
    parser.add_argument(
        "--target", metavar="redis://HOST:PORT/DB",
        help="run the scenario against this Redis database instead of a server of our own; it runs in a namespace of its "
        "own (the database may hold other data), deleted when the run ends",
    )
    parser.add_argument("--flush-target", action="store_true", help="empty the whole --target database first (FLUSHDB); not needed")
    parser.add_argument("--html", type=writable_path, metavar="PAGE.html", help="also write the history as a page (see kvmgr check --html)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of run_driver.py."""
    args = build_parser().parse_args(argv)
    interrupt_on_terminate()
    try:
        scenario = load_scenario(find_scenario(args.scenario) if args.scenario else seed_scenario_path())
        if args.target is not None:
            prepare_target(args.target, args.flush_target)
        report = run_scenario(scenario, args.address, args.target, args.timeout, args.html)
    except KvmgrError as exc:
        print(f"run_driver.py: error: {exc}", file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(report.to_json())
    else:
        print(f"scenario {report.scenario} ({shown_path(report.path)})")
        print(report.table())
        passed = sum(row.passed is True for row in report.rows)
        skipped = sum(row.passed is None for row in report.rows)
        verdict = "PASS" if report.passed else "FAIL"
        print(f"{verdict}: {passed}/{len(report.rows)} rows passed ({skipped} skipped) in {report.seconds:.2f}s")
    return EXIT_OK if report.passed else EXIT_NEGATIVE


def shown_path(path: str) -> str:
    """A path relative to the working directory when it lies below it (as a user would type it), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path
