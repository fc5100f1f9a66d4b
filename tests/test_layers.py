"""The tree's layers: data flows tools -> client -> protocol -> server -> store, and `import kvmgr` stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kvmgr"

# What each layer may import from kvmgr, besides itself and the core modules (errors, config).
ALLOWED = {
    "protocol": set(),
    "server": {"protocol"},
    "verify": {"protocol"},
    "client": {"protocol", "verify"},
    "tools": {"protocol", "server", "verify", "client"},
}
CORE = {"errors", "config"}


def layer_of(module: str) -> str | None:
    """The layer a dotted kvmgr module belongs to (None for the core and the package itself)."""
    parts = module.split(".")
    if parts[0] != "kvmgr" or len(parts) < 2 or parts[1] in CORE:
        return None
    return parts[1] if parts[1] in ALLOWED else "client"  # `from kvmgr import connect`: the package's API is the client's


def kvmgr_imports(path: Path) -> set[str]:
    """Every kvmgr module a source file imports (at any depth: lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("kvmgr"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kvmgr"):
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


# `python -m` entry points are above every layer (nothing imports them), so they may start a tool.
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in ALLOWED and p.name != "__main__.py")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_every_import_goes_down_the_layers(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0]
    wrong = sorted(name for name in kvmgr_imports(path) if layer_of(name) not in (None, own, *ALLOWED[own]))
    assert not wrong, f"{path.name} ({own}) imports from a layer above or beside it: {wrong}"


def test_the_layer_table_covers_every_package() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED)


def test_import_kvmgr_loads_no_tool_dependencies() -> None:
    probe = "import sys, kvmgr; print(sorted(m for m in ('psutil', 'tabulate', 'redis') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "[]"


def test_the_earlier_actor_entry_point_still_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "kvmgr.client", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--name" in result.stdout, result.stderr
