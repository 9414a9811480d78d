"""One vocabulary for failures: label, message and whether Redis is unreachable, for every exception."""

from __future__ import annotations

import ssl

import pytest
import redis

from janitor import errors
from janitor.errors import Exit, classify
from janitor.operations.broker import SeparatorMismatch


@pytest.mark.parametrize(
    ("exc", "label", "unreachable", "says"),
    [
        (redis.AuthenticationError("WRONGPASS invalid username-password pair"), "auth", True, "check the user and"),
        (redis.ResponseError("NOAUTH Authentication required."), "auth", True, "authentication failed"),
        (redis.ConnectionError("Error 1 connecting: [SSL: CERTIFICATE_VERIFY_FAILED]"), "tls", True, "ssl_ca_certs"),
        (ssl.SSLError(1, "handshake"), "tls", True, "TLS handshake failed"),
        (redis.TimeoutError("Timeout reading from socket"), "timeout", True, "check the host, port"),
        (ConnectionRefusedError(111, "refused"), "connection", True, "cannot reach Redis"),
        (redis.InvalidResponse("Protocol error, got 'H' as reply type byte"), "protocol", True, "HTTP port"),
        (redis.ReadOnlyError("You can't write against a read only replica."), "readonly", True, "the primary"),
        (redis.ResponseError("FENCED lease lost before this batch"), "fenced", False, "FENCED"),
        (redis.ResponseError("OOM command not allowed"), "response", False, "OOM"),
        (SeparatorMismatch("set JANITOR_BROKER_SEP"), "config", False, "JANITOR_BROKER_SEP"),
        (ValueError("bug"), "internal", False, "bug"),
    ],
)
def test_each_failure_has_one_label_and_one_line(exc: BaseException, label: str, unreachable: bool, says: str) -> None:
    failure = classify(exc)
    assert (failure.label, failure.unreachable) == (label, unreachable)
    assert says in failure.message
    assert "\n" not in failure.message


def test_messages_never_carry_a_password() -> None:
    exc = redis.ConnectionError("Error connecting to redis://user:Hunter2@h:6379/0")
    assert "Hunter2" not in classify(exc).message
    assert "Hunter2" not in classify(redis.ResponseError("bad redis://:Hunter2@h")).message


def test_exit_codes_by_meaning() -> None:
    """README's table: 0 done; 1 refused, findings or cut short; 2 bad configuration or unreachable."""
    assert [int(e) for e in (Exit.OK, Exit.REFUSED, Exit.FINDINGS, Exit.FORCED)] == [0, 1, 1, 1]
    assert int(Exit.BAD_CONFIG) == int(Exit.UNREACHABLE) == 2
    assert {"connection", "timeout", "auth", "tls"} <= errors.UNREACHABLE
