"""SIGTERM and SIGHUP as KeyboardInterrupt, so that every command reaps what it started (light: no psutil)."""

from __future__ import annotations

import os
import signal

TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def interrupt_on_terminate() -> None:
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, so every `with ProcessGroup()` reaps its processes.

    Only in this process: a forked child (a multiprocessing.Pool worker) gets the default action back, as
    Pool.terminate() expects its SIGTERM to end a worker at once, not to raise inside it.
    """
    for signum in TERMINATING_SIGNALS:
        signal.signal(signum, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _default_action_in_child() -> None:
    for signum in TERMINATING_SIGNALS:
        if signal.getsignal(signum) is _interrupt:
            signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(after_in_child=_default_action_in_child)
