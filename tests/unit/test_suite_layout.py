"""The test suite's own layout: helpers come from tests/support, and the unit tier needs no server.

A test module that imports another drags its fixtures, its autouse hooks and its imports
(a server, a Celery app) into every module that borrows a helper from it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

TESTS = ROOT / "tests"
UNIT = TESTS / "unit"
# What runs a server, a daemon or a worker, or waits on one: the integration tier's alone.
NOT_FOR_UNIT = {
    "janitor.dev.embedded",
    "subprocess",
    "tests.support.acl_audit",
    "tests.support.celery",
    "tests.support.celery_keyspace",
    "tests.support.daemons",
    "tests.support.deploy",
    "tests.support.servers",
    "tests.broker_app",
    "tests.big_app",
    "tests.celery_app",
    "tests.diag_app",
}
SERVER_FIXTURES = {"engine_server", "server", "client", "settings"}


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, ``from a import b`` counted as both ``a`` and ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules_in(under: Path) -> list[Path]:
    return sorted(under.rglob("test_*.py"))


def is_test_module(name: str) -> bool:
    return name.startswith("tests.") and (name.rsplit(".", 1)[-1].startswith("test_") or name.endswith(".conftest"))


def test_both_tiers_are_there() -> None:
    assert modules_in(UNIT)
    assert modules_in(TESTS / "integration")
    assert not list(TESTS.glob("test_*.py")), "a test module outside tests/unit and tests/integration"


def test_no_module_imports_a_test_module() -> None:
    """Shared helpers live in tests/support; no module of tests/ imports a test module or a conftest."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in imported(path) if is_test_module(name))
        for path in sorted(TESTS.rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_unit_tier_starts_no_server() -> None:
    """Unit modules, and the conftest they load, import nothing that runs a server, a daemon or a worker."""
    modules = [*modules_in(UNIT), TESTS / "conftest.py", *(UNIT.glob("conftest.py"))]
    offenders = {str(path.relative_to(ROOT)): sorted(imported(path) & NOT_FOR_UNIT) for path in modules}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_unit_tier_asks_for_no_server_fixture() -> None:
    """No unit test or fixture takes the integration tier's server, client or settings fixtures."""
    offenders = []
    for path in modules_in(UNIT):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and (node.name.startswith("test_") or node.decorator_list):
                taken = {arg.arg for arg in node.args.args + node.args.kwonlyargs} & SERVER_FIXTURES
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({name})" for name in sorted(taken)]
    assert offenders == []
