"""Argument types for the command-line tools (argparse `type=` callables): what a count, a timeout or an output path may be."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from kvmgr.config import MAX_TIMEOUT, MIN_TIMEOUT


def positive_int(text: str, maximum: int = sys.maxsize) -> int:
    """An argparse type: a whole number above 0 and at most `maximum` (what a count or a size can be)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= maximum:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0 and at most {maximum}, got {text[:40]!r}")
    return value


def positive_float(text: str, maximum: float = MAX_TIMEOUT) -> float:
    """An argparse type: a number of seconds from MIN_TIMEOUT (a millisecond) to `maximum` (a day)."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not MIN_TIMEOUT <= value <= maximum:
        raise argparse.ArgumentTypeError(f"expected a number of seconds from {MIN_TIMEOUT:g} to {maximum:g}, got {text[:40]!r}")
    return value


def writable_path(text: str) -> Path:
    """An argparse type: a file this process can create or overwrite (checked before any work starts)."""
    path = Path(text)
    directory = path.parent
    if path.is_dir():
        problem = "it is a directory"
    elif not directory.is_dir():
        problem = f"directory {directory} does not exist"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = "it is not writable"
    elif not path.exists() and not os.access(directory, os.W_OK | os.X_OK):
        problem = f"directory {directory} is not writable"
    else:
        return path
    raise argparse.ArgumentTypeError(f"cannot write {text}: {problem}")


def number(text: str) -> int | float:
    """An argparse type: an int ("3", "-2") or a finite float ("0.5", "1e3"), as incr's BY can be."""
    if re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected an int or a finite float, got {text[:40]!r}")
    return value


def seconds_to_live(text: str) -> int | float:
    """An argparse type: a ttl, a number of seconds above 0 (the client refuses more than a hundred years)."""
    value = number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text[:40]!r}")
    return value


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--address/--target, --authkey-file and --timeout: how a command that talks to a running server finds it."""
    from kvmgr.config import DEFAULT_ADDRESS, DEFAULT_TIMEOUT

    parser.add_argument(
        "--address", "--target", dest="address", default=DEFAULT_ADDRESS, metavar="ADDRESS",
        help=f"the server: HOST:PORT, a Unix socket path, or a redis://HOST:PORT/DB URL (default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--authkey-file", type=Path, help="read the kvmgr server's authkey from this file (else $KVMGR_AUTHKEY, else the default key file)",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="seconds to wait for a connection or a reply (default %(default)s)",
    )
