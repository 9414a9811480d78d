"""The package's layers (docs/architecture.md): every import points down, never up."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

# Lowest first. A module may import from its own layer and the ones before it.
LAYERS = [
    ("janitor.celery_model", "janitor.redis_io.connection", "janitor.dev", "janitor.__init__", "janitor.__version__"),
    ("janitor.config", "janitor.errors"),
    ("janitor.redis_io",),
    ("janitor.operations", "janitor.dev.demo"),
    ("janitor.reports",),
    ("janitor.service",),
    ("janitor.cli", "janitor.__main__"),
]


def layer(module: str) -> int:
    """The layer of a module: the longest prefix listed wins (a module listed alone beats its package)."""
    best, rank = "", -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, rank = name, i
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return rank


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("janitor"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if node.module in {"janitor"} | PACKAGES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("janitor"))
    return found


PACKAGES = {f"janitor.{p.name}" for p in (ROOT / "janitor").iterdir() if (p / "__init__.py").exists()}


def modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "janitor").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def test_every_import_points_down() -> None:
    upward = []
    for name, path in sorted(modules().items()):
        own = layer(name if name != "janitor" else "janitor.__init__")
        for target in imports(path):
            if target in {"janitor"} | PACKAGES:
                continue  # the package itself; what is taken from it is checked name by name
            if layer(target) > own:
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer(name if name != "janitor" else "janitor.__init__")
