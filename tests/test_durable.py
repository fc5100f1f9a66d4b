"""Durable mode: data survives restarts in every fsync mode, one server per data directory."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

import kvmgr
from kvmgr.processes import ProcessGroup, child_environment, python_module


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
