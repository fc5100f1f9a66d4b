"""Durable mode: data survives restarts in every fsync mode, one server per data directory, and failures of the disk."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvmgr
from kvmgr.config import fresh_authkey
from kvmgr.server.durable import DATABASE_NAME, FSYNC_MODES
from kvmgr.tools import faults
from kvmgr.tools.processes import ProcessGroup, child_environment, python_module, read_line
from tests.commit_failure import COMMITTED, fail_a_commit_in_flight
from tests.conftest import run_actor


def durable(data_dir: Path, fsync: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--fsync", fsync]


@pytest.mark.parametrize("fsync", ["always", "batch", "off"])
def test_data_survives_a_restart(group: ProcessGroup, tmp_path: Path, fsync: str) -> None:
    server = group.start_server(extra_args=durable(tmp_path, fsync))
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        client.store("text", "value")
        client.store("blob", b"\x00\x01")
        client.store_many({"a": "1", "b": "2", "gone": "x"})
        client.delete("gone")
        assert client.cas("a", "1", "one")
        client.quit()
    assert server.process.wait(timeout=2) == 0
    again = group.start_server(extra_args=durable(tmp_path, fsync))
    with kvmgr.connect(again.address_text, authkey=again.authkey.encode()) as client:
        assert client.get_many(["text", "blob", "a", "b", "gone"]) == {"text": "value", "blob": b"\x00\x01", "a": "one", "b": "2"}
        assert client.size() == 4


def test_the_database_is_sqlite_in_wal_mode(group: ProcessGroup, tmp_path: Path) -> None:
    server = group.start_server(extra_args=durable(tmp_path, "always"))
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        client.store("k", "v")
        with sqlite3.connect(tmp_path / "kvmgr.sqlite3") as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute("SELECT value FROM kv WHERE key = 'k'").fetchone() == ("v",)


def test_second_server_on_the_same_directory_refuses(group: ProcessGroup, tmp_path: Path) -> None:
    server = group.start_server(extra_args=durable(tmp_path, "batch"))
    result = subprocess.run(python_module("kvmgr", "serve", "--address", "127.0.0.1:0", *durable(tmp_path, "batch")),
                            env=child_environment(server.authkey), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"kvmgr serve: error: data directory {tmp_path} is in use by another kvmgr server"


def test_sigterm_closes_the_database_cleanly(group: ProcessGroup, tmp_path: Path) -> None:
    server = group.start_server(extra_args=durable(tmp_path, "batch"))
    with kvmgr.connect(server.address_text, authkey=server.authkey.encode()) as client:
        client.store_many({f"k{i}": str(i) for i in range(500)})
    server.process.terminate()
    assert server.process.wait(timeout=2) == 0
    assert not (tmp_path / "kvmgr.sqlite3-wal").exists() or (tmp_path / "kvmgr.sqlite3-wal").stat().st_size == 0
    with sqlite3.connect(tmp_path / "kvmgr.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM kv").fetchone() == (500,)


def test_bad_fsync_mode_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(python_module("kvmgr", "serve", *durable(tmp_path, "sometimes")), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "invalid choice" in result.stderr


# --- failures: a full disk, keys the journal cannot take, databases written by other tools ---


@contextlib.contextmanager
def database_locked(group: ProcessGroup, disk: faults.TmpfsServer) -> Iterator[None]:
    """Hold SQLite's write lock on the server's database, so that its next commit waits (up to its busy timeout).

    The holder runs inside the server's mount namespace (nsenter): SQLite resolves symbolic links in a
    database's path, so /proc/<pid>/root would lead it to another file.
    """
    code = "import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1], isolation_level=None)\ndb.execute('BEGIN IMMEDIATE')\n" \
           "print('locked', flush=True)\nsys.stdin.read()\n"
    argv = ["nsenter", f"--target={disk.process.pid}", "--mount", sys.executable, "-c", code, str(disk.data_dir / DATABASE_NAME)]
    holder = group.launch(argv, stdin=True)
    assert read_line(holder, time.monotonic() + 10) == "locked", holder.stderr.read().decode()
    try:
        yield
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0


def _tmpfs_or_skip(nsenter: bool = False) -> None:
    reason = faults.TmpfsServer.unavailable()
    if reason is None and nsenter and shutil.which("nsenter") is None:
        reason = "needs nsenter (util-linux)"
    if reason is not None:
        pytest.skip(f"a real full file system {reason}")


@pytest.mark.parametrize("fsync", FSYNC_MODES)
def test_a_full_disk_fails_the_writes_in_flight_then_writes_recover(group: ProcessGroup, tmp_path: Path, fsync: str) -> None:
    """A real full file system (a 8 MiB tmpfs) under a commit held open while a dependent cas and a reader run."""
    _tmpfs_or_skip(nsenter=True)
    disk = faults.TmpfsServer(group, tmp_path / "data", fsync)
    server = disk.next_server()

    def connect() -> kvmgr.Client:
        return kvmgr.connect(server.address_text, authkey=server.authkey.encode(), timeout=10.0)

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        disk.fill()
        with database_locked(group, disk):  # the commit starts, then waits for the lock
            yield
        # released: the commit goes on, and finds the disk full

    with connect() as client:
        client.store("k", COMMITTED)
        fail_a_commit_in_flight(fsync, client, connect, held, lambda threads: None)  # always/off: not observable from here
        disk.free()
        assert client.store("after", "space was freed") == "saved"
        client.quit()
    again = disk.next_server()
    with kvmgr.connect(again.address_text, authkey=again.authkey.encode()) as client:
        assert client.get_many(["k", "after"]) == {"k": COMMITTED, "after": "space was freed"}
        client.quit()
    failures = [line for line in disk.log_lines() if "commit to durable storage failed" in line]
    assert len(failures) == 1, failures
    assert failures[0].startswith("kvmgr serve: commit to durable storage failed: database or disk is full: ")


def test_the_fault_row_batch_commit_failure_loses_nothing_and_shows_nothing_that_failed() -> None:
    _tmpfs_or_skip()
    result = faults.batch_commit_failure()
    assert result.passed and result.wrong_answers == 0 and result.lost == 0, result.cells()
    assert result.acknowledged >= 60 and "writes refused" in result.scenario


@pytest.mark.parametrize("fsync", FSYNC_MODES)
def test_a_key_or_value_utf8_cannot_encode_is_refused_and_the_store_carries_on(group: ProcessGroup, tmp_path: Path, fsync: str) -> None:
    server = group.start_server(extra_args=durable(tmp_path, fsync))
    undecodable = os.fsdecode(b"\xff")  # what Python makes of an argument that is not UTF-8: a lone surrogate
    for args in (["--key", f"k{undecodable}", "--value", "v"], ["--key", "k", "--value", f"v{undecodable}"]):
        refused = run_actor(server, *args)
        assert (refused.returncode, refused.stdout) == (2, ""), refused.stderr
        assert len(refused.stderr.splitlines()) == 1 and "cannot be encoded as UTF-8" in refused.stderr
    stored = run_actor(server, "--key", "k", "--value", "v")
    assert (stored.returncode, stored.stdout.strip()) == (0, "Saved Successfully for key:k"), stored.stderr


@pytest.mark.parametrize(("row", "problem"), [
    ((5, "v"), "a row has a key of type integer ('5'), not text"),
    ((b"\xffbinary", "v"), "a row has a key of type blob ('\\\\xffbinary'), not text"),
    (("", "v"), "a row has an empty key"),
    (("k", 1.5), "the value of key 'k' is of type real, not text or blob"),
    (("k", None), "the value of key 'k' is of type null, not text or blob"),
])
def test_a_row_kvmgr_did_not_write_stops_the_server_with_one_line(group: ProcessGroup, tmp_path: Path, row: tuple, problem: str) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / DATABASE_NAME)) as db, db:
        db.execute("CREATE TABLE kv (key PRIMARY KEY, value)")  # another tool's idea of the table: no types
        db.execute("INSERT INTO kv VALUES ('fine', 'row'), (?, ?)", row)
    serve = group.launch(python_module("kvmgr", "serve", "--address", "127.0.0.1:0", *durable(tmp_path, "always")),
                         child_environment(fresh_authkey()))
    assert serve.wait(timeout=15) == 2
    assert serve.stderr.read().decode().splitlines() == [
        f"kvmgr serve: error: cannot use {tmp_path / DATABASE_NAME}: {problem}; kvmgr did not write it "
        "(was the database changed by another tool?)"
    ]


def test_a_data_dir_that_is_a_regular_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = subprocess.run(python_module("kvmgr", "serve", "--address", "127.0.0.1:0", *durable(tmp_path / "file", "batch")),
                            env=child_environment(fresh_authkey()), capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (2, f"kvmgr serve: error: --data-dir {tmp_path / 'file'} is not a directory\n")
