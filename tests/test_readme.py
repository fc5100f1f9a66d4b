"""README's examples run as printed."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap

import pytest

from kvmgr.tools.processes import ProcessGroup, child_environment

from .conftest import ROOT

README = ROOT / "README.md"


def readme_block(marker: str) -> str:
    """The fenced code block that follows `<!-- marker: ... -->` in README.md."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker}:.*?-->\n *```\w*\n(.*?)\n *```", text, re.DOTALL)
    assert found, f"README.md has no block marked {marker}"
    return textwrap.dedent(found.group(1))


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_stdlib_base_manager_client_runs_as_printed(group: ProcessGroup) -> None:
    if not port_is_free(50000):
        pytest.skip("the README example uses the default address 127.0.0.1:50000, which is in use here")
    server = group.start_server("127.0.0.1:50000")
    result = subprocess.run([sys.executable, "-c", readme_block("stdlib-client")], env=child_environment(server.authkey),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["saved", "bar"]
