"""The Lua scripts (luacheck: integration tier): each file documents its KEYS, ARGV and reply,
and each script of janitor/redis_io/lua/ is run by exactly one wrapper in janitor/redis_io/scripts.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from janitor.redis_io import scripts
from tests.support import LUA, LUA_SOURCES, ROOT

SLOT = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
DOCUMENTED_RANGE = re.compile(r"\b(KEYS|ARGV)\[(\d+)\.\.n\]")


def header(path: Path) -> tuple[list[str], str]:
    """The comment block a script starts with, and the code after it."""
    lines = path.read_text().splitlines()
    n = next((i for i, line in enumerate(lines) if not line.startswith("--")), len(lines))
    return lines[:n], "\n".join(lines[n:])


def test_the_scripts_are_found() -> None:
    """The package data is where the loader looks: every script constant's file, no fewer (the count
    itself is held by test_each_script_file_is_loaded_once)."""
    assert len(list(LUA.glob("*.lua"))) >= 11


@pytest.mark.parametrize("path", LUA_SOURCES, ids=lambda p: p.name)
def test_every_script_documents_its_keys_argv_and_reply(path: Path) -> None:
    """A header naming KEYS and ARGV slot by slot and the reply; every numbered slot the code reads is in it."""
    lines, code = header(path)
    assert lines, f"{path.name} does not start with a comment"
    assert lines[0].startswith(f"-- {path.stem.upper()}:"), lines[0]
    text = "\n".join(lines)
    for word in ("-- KEYS", "-- ARGV", "-- Returns"):
        assert re.search(rf"^{word}", text, re.MULTILINE), f"{path.name}: no {word!r} line in its header"
    ranges = {kind: int(first) for kind, first in DOCUMENTED_RANGE.findall(text)}
    for kind, n in set(SLOT.findall(code)):
        documented = f"{kind}[{n}]" in text or (kind in ranges and ranges[kind] <= int(n))
        assert documented, f"{path.name} reads {kind}[{n}], which its header does not describe"


def _packaged() -> dict[str, str]:
    """Script constant in janitor/redis_io/scripts.py -> the janitor/redis_io/lua/ file it loads."""
    tree = ast.parse((ROOT / "janitor" / "redis_io" / "scripts.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call = node.value
            if isinstance(call.func, ast.Attribute) and call.func.attr == "packaged":
                (target,) = node.targets
                assert isinstance(target, ast.Name)
                (arg,) = call.args
                assert isinstance(arg, ast.Constant)
                found[target.id] = arg.value
    return found


def test_each_script_file_is_loaded_once() -> None:
    loaded = _packaged()
    assert sorted(loaded.values()) == sorted(p.stem for p in LUA.glob("*.lua"))
    assert {name: getattr(scripts, name).name for name in loaded} == loaded


def test_each_script_has_exactly_one_wrapper_named_after_it() -> None:
    """Only the wrapper touches its script; nothing else in janitor/ or bench/ names one."""
    constants = _packaged()
    tree = ast.parse((ROOT / "janitor" / "redis_io" / "scripts.py").read_text())
    users: dict[str, list[str]] = {name: [] for name in constants}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for name in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & set(constants):
                users[name].append(node.name)
    assert users == {name: [file] for name, file in constants.items()}
    for path in sorted((ROOT / "janitor").rglob("*.py")) + sorted((ROOT / "bench").glob("*.py")):
        if path.name == "scripts.py" and path.parent.name == "janitor":
            continue
        module = ast.parse(path.read_text())
        named = {
            n.attr
            for n in ast.walk(module)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "scripts"
        }
        named |= {
            alias.name
            for n in ast.walk(module)
            if isinstance(n, ast.ImportFrom) and n.module == "janitor.redis_io.scripts"
            for alias in n.names
        }
        assert not named & set(constants), f"{path.relative_to(ROOT)} uses {named & set(constants)}, not a wrapper"
