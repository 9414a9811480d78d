"""luacheck, with the repository's .luacheckrc: nothing in the server-side scripts, and what Redis would refuse."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import LUA_SOURCES, ROOT


def luacheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    found = shutil.which("luacheck")
    assert found, "luacheck is not installed: `make test` installs it (scripts/system-deps.sh: Debian's lua-check)"
    argv = [found, "--config", str(ROOT / ".luacheckrc"), "--no-color", "--formatter", "plain", *map(str, paths)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


def test_luacheck_finds_nothing() -> None:
    done = luacheck(*LUA_SOURCES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_luacheck_refuses_what_redis_would(tmp_path: Path) -> None:
    """The settings are in force: Redis's libraries are known, a global written or misspelt is not."""
    bad = tmp_path / "bad.lua"
    bad.write_text(
        "local v = redis.call('GET', KEYS[1])\ncache = cjson.decode(v)\nreturn rediss.call('PTTL', ARGV[1])\n"
    )
    done = luacheck(bad)
    assert done.returncode != 0
    problems = [line.split(": ", 1)[1] for line in done.stdout.splitlines()]
    assert problems == [
        "setting non-standard global variable 'cache'",
        "accessing undefined variable 'rediss'",
    ]
