"""Pipelining on the manager connection: many requests in flight, bounded so nothing deadlocks."""

from __future__ import annotations

import kvmgr


def test_pipeline_of_large_values_does_not_deadlock(client: kvmgr.Client) -> None:
    big = "x" * 1_000_000
    stores = [("store", f"b{i}", big) for i in range(30)]
    gets = [("get", f"b{i}") for i in range(30)]
    results = client.pipeline(stores + gets)
    assert results[:30] == ["saved"] * 30 and results[30:] == [big] * 30


def test_many_pipelined_calls_exceed_the_window(client: kvmgr.Client) -> None:
    results = client.pipeline([("store", f"k{i}", str(i)) for i in range(2000)])
    assert results == ["saved"] * 2000
    assert client.size() == 2000


def test_a_pipeline_waits_its_own_timeout_whatever_the_last_call_on_the_connection_set(client: kvmgr.Client) -> None:
    client.call("size", timeout=0.05)  # leaves its connection armed with 50 ms
    [outcome] = client.pipeline([("rendezvous", "alone", 2, 0.5)], raise_on_error=False)
    assert isinstance(outcome, kvmgr.KvmgrError) and "not all 2 parties" in str(outcome)  # not OutcomeUnknown after 50 ms
