"""A quick subset of the fault suite (`make faults` runs it all, with more rounds)."""

from __future__ import annotations

import pytest

from kvmgr.tools import faults


@pytest.mark.parametrize("fsync", ["always", "batch"])
def test_kill_9_under_writers_loses_no_acknowledged_write(fsync: str) -> None:
    result = faults.kill_server_under_writers(fsync, rounds=1)
    assert result.acknowledged >= faults.WRITERS * faults.ACKS_BEFORE_KILL
    assert result.lost == 0 and result.passed, result.cells()


@pytest.mark.parametrize("name", ["random bytes", "absurd length prefix", "HTTP request", "wrong authkey",
                                  "unexposed method, bad types, oversize key and value"])
def test_hostile_peer_leaves_honest_clients_unharmed(name: str) -> None:
    result = faults.hostile_peer(name)
    assert result.passed, result.cells()


def test_client_killed_mid_call_leaves_the_server_serving() -> None:
    result = faults.kill_client_mid_call()
    assert result.passed and result.acknowledged > 0, result.cells()


def test_dead_or_hung_server_fails_within_the_timeout() -> None:
    result = faults.dead_server_fails_fast(timeout=0.5)
    assert result.passed, result.cells()


def test_reconnect_after_restart() -> None:
    result = faults.reconnect_after_restart()
    assert result.passed and result.acknowledged == 2, result.cells()


@pytest.mark.parametrize("scenario", [faults.interrupted_calls, faults.shared_by_threads, faults.inherited_by_fork])
def test_no_answer_goes_astray_when_a_client_is_interrupted_shared_or_forked(scenario) -> None:
    result = scenario()
    assert result.passed and result.acknowledged > 0 and result.rounds >= 100, result.cells()
