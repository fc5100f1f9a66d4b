"""README's examples run as printed."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap

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
    """As printed, on the default port; when something on this machine holds that port (an outgoing connection may
    have it as its ephemeral port), on a free one written into the example's `port = 50000` line instead."""
    snippet = readme_block("stdlib-client")
    assert "port = 50000" in snippet
    server = group.start_server("127.0.0.1:50000" if port_is_free(50000) else "127.0.0.1:0")
    assert isinstance(server.address, tuple)
    snippet = snippet.replace("port = 50000", f"port = {server.address[1]}")
    result = subprocess.run([sys.executable, "-c", snippet], env=child_environment(server.authkey),
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["saved", "bar"]
