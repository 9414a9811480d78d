"""What went wrong, in one vocabulary: a bounded label for metrics, one line for people, an exit code.

Every failure the janitor reports, from a one-shot verb or a daemon job, goes through
:func:`classify`, so a log line, a metric label and an exit code never disagree.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass

import redis

from janitor.redis_io.connection import mask_url


class Exit(enum.IntEnum):
    """Exit codes of every verb (README, "Commands")."""

    OK = 0
    REFUSED = 1  # Redis refused the work, or it was not safe to do now (kombu's unacked_mutex held)
    FINDINGS = 1  # diagnose: at least one error-level finding
    FORCED = 1  # run: the shutdown timeout cut a batch short
    BAD_CONFIG = 2  # a setting is missing or wrong
    UNREACHABLE = 2  # no usable Redis at the URL: host, port, password, TLS


# Labels that mean "Redis is not usable from here", as opposed to one refused command.
UNREACHABLE = frozenset({"connection", "timeout", "auth", "tls", "protocol", "readonly"})


class ConfigMismatch(Exception):
    """A setting does not match what the workers use (the message names it and the fix)."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One failure: ``label`` is bounded (a metric label), ``message`` is password-free and says what to do."""

    label: str
    message: str

    @property
    def unreachable(self) -> bool:
        return self.label in UNREACHABLE


def classify(exc: BaseException) -> Failure:
    text = str(exc)
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return Failure("auth", "authentication failed: check the user and password in the Redis URL")
    if isinstance(exc, ssl.SSLError) or "SSL" in text or "certificate" in text:
        return Failure("tls", f"TLS handshake failed ({mask_url(text)}): check ssl_ca_certs / ssl_cert_reqs in the URL")
    if isinstance(exc, redis.InvalidResponse):
        detail = f"the server does not speak the Redis protocol ({mask_url(text)})"
        return Failure("protocol", f"{detail}: is this an HTTP port or a proxy?")
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return Failure("timeout", f"cannot reach Redis ({mask_url(text)}): check the host, port and network")
    if isinstance(exc, redis.ConnectionError | OSError):
        return Failure("connection", f"cannot reach Redis ({mask_url(text)}): check the host, port and network")
    if isinstance(exc, redis.ReadOnlyError):
        return Failure("readonly", f"{mask_url(text)}: the URL names a read-only replica; point it at the primary")
    if isinstance(exc, redis.ResponseError):
        return Failure("fenced" if text.startswith("FENCED") else "response", mask_url(text))
    if isinstance(exc, ConfigMismatch):
        return Failure("config", text)
    return Failure("internal", mask_url(text))
