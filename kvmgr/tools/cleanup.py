"""Leaving no trace: a run (the driver, stress, the failover audit) deletes the namespace it wrote in, however it ends."""

from __future__ import annotations

import sys

from kvmgr.errors import KvmgrError


def delete_run_namespace(program: str, target: str, namespace: str, timeout: float, authkey: bytes | None = None) -> None:
    """Delete every key of the run's namespace on target (and, on Redis, kvmgr's bookkeeping about it). A target gone
    meanwhile is told of in one line on stderr, never raised over the run's own outcome."""
    from kvmgr.client import connect
    from kvmgr.client.namespace import NamespacedClient

    try:
        with connect(target, authkey=authkey, timeout=timeout, namespace=namespace) as client:
            if isinstance(client, NamespacedClient):
                client.delete_namespace()
    except KvmgrError as exc:
        print(f"{program}: could not delete the run's keys (namespace {namespace!r}): {exc}", file=sys.stderr, flush=True)
