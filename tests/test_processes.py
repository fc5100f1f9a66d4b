"""The one helper for launching and reaping processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD_HANDLER = textwrap.dedent("""
    import multiprocessing, signal
    from kvmgr.tools.processes import interrupt_on_terminate
    interrupt_on_terminate()
    def handler(_):
        return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with multiprocessing.get_context("fork").Pool(2) as pool:
        print(sorted(set(pool.map(handler, range(4)))), signal.getsignal(signal.SIGTERM).__name__)
""")


def test_sigterm_interrupts_the_command_but_ends_its_forked_pool_workers_at_once() -> None:
    """Pool.terminate() ends workers with SIGTERM: in them it must keep its default action, or a worker can
    raise inside the pool's own locks and the parent waits for it forever (kvmgr faults once hung so)."""
    result = subprocess.run([sys.executable, "-c", CHILD_HANDLER], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[True]", "_interrupt"]
