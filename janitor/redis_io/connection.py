"""Redis connections from Celery-style URLs, and URL masking.

Accepts what Celery accepts: ``redis://``, ``rediss://`` with ``ssl_cert_reqs``,
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` (``CERT_REQUIRED`` or
``required`` spellings), ``unix://`` / ``socket://`` with ``virtual_host`` or
``db``, and Sentinel as kombu spells it: ``sentinel://[:password@]h1:26379/0;
sentinel://h2:26379/0`` with the master's name given apart (Celery's
``master_name`` transport option, our ``JANITOR_SENTINEL_MASTER``). Unlike
kombu, a ``rediss://`` URL verifies the server by default.
"""

from __future__ import annotations

import inspect
import re
import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.sentinel
import structlog
from redis.retry import Retry

_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}
_TLS_PATHS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
# The password runs to the last "@" before the host, so a raw "@" in it is masked too.
_USERINFO = re.compile(r"(?<=://)([^:/@\s]*):(\S*?)@(?=[^@/\s]*(?:[/?#\s]|$))")


# No CLIENT SETINFO on every connect: one command fewer to pay for and to grant
# (docs/acl.md). redis-py 8 spells it driver_info=None; older versions lib_name=None.
_NO_SETINFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


class URLError(ValueError):
    """The Redis URL cannot be used; the message never contains the password."""


def mask_url(url: str) -> str:
    """Hide the password of a URL (``redis://user:***@host``); safe on any string."""
    masked = _USERINFO.sub(lambda m: f"{m.group(1)}:***@", url)
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", masked)


def client_kwargs(url: str, *, socket_timeout: float) -> dict[str, Any]:
    """Translate a Celery-style URL into ``redis.Redis`` keyword arguments."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "client_name": "celery-janitor",
        **_NO_SETINFO,
    }
    try:
        port = parts.port
    except ValueError:
        raise URLError(f"bad port in Redis URL {mask_url(url)}") from None
    if parts.username:
        kwargs["username"] = unquote(parts.username)
    if parts.password:
        kwargs["password"] = unquote(parts.password)
    elif query.get("password"):
        kwargs["password"] = query["password"]
    if scheme in {"unix", "socket"}:
        kwargs["unix_socket_path"] = unquote(parts.path)
        db = query.get("db") or query.get("virtual_host") or "0"
    elif scheme in {"redis", "rediss"}:
        kwargs["host"] = parts.hostname or "localhost"
        kwargs["port"] = port or 6379
        db = query.get("db") or parts.path.strip("/") or "0"
    else:
        raise URLError(f"unsupported scheme {scheme!r} in {mask_url(url)}: use redis://, rediss:// or unix://")
    try:
        kwargs["db"] = int(db)
    except ValueError:
        raise URLError(f"bad database number {db!r} in {mask_url(url)}") from None
    tls_opts = {k: v for k, v in query.items() if k.startswith("ssl_")}
    if scheme == "rediss":
        kwargs.update(_tls_kwargs(tls_opts, url))
    elif tls_opts:
        raise URLError(f"TLS options given on a non-TLS URL {mask_url(url)}: use rediss://")
    return kwargs


def _sentinel_kwargs(url: str, *, socket_timeout: float) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels of a ``sentinel://h1;sentinel://h2`` URL, and the master's connection arguments.

    As in kombu, the user and password of the first URL that has one are the master's.
    """
    hosts: list[tuple[str, int]] = []
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in url.split(";"))):
        if not is_sentinel(part):
            raise URLError(f"{mask_url(part)} in a sentinel URL: every part must be sentinel://host:port")
        one = client_kwargs("redis" + part[len("sentinel") :], socket_timeout=socket_timeout)
        hosts.append((one.pop("host"), one.pop("port") if urlsplit(part).port else 26379))
        kwargs = one if not kwargs or ("password" in one and "password" not in kwargs) else kwargs
    if not hosts:
        raise URLError("a sentinel URL with no sentinels: use sentinel://host:26379/0;sentinel://host2:26379/0")
    return hosts, kwargs


def _tls_kwargs(opts: dict[str, str], url: str) -> dict[str, Any]:
    reqs = opts.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise URLError(f"ssl_cert_reqs={reqs!r} in {mask_url(url)}: use required, optional or none")
    out: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": _CERT_REQS[reqs]}
    out.update({k: unquote(v) for k, v in opts.items() if k in _TLS_PATHS})
    if _CERT_REQS[reqs] == ssl.CERT_NONE:
        out["ssl_check_hostname"] = False
    elif "ssl_check_hostname" in opts:
        out["ssl_check_hostname"] = opts["ssl_check_hostname"].lower() in {"1", "true", "yes", "on"}
    return out


def tls_verifies(url: str) -> bool | None:
    """True/False for a TLS URL (does it verify the server?), None for plain connections."""
    if urlsplit(url).scheme.lower() != "rediss":
        return None
    return bool(_tls_kwargs({k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}, url)["ssl_cert_reqs"])


def is_sentinel(url: str) -> bool:
    return urlsplit(url.strip()).scheme.lower() == "sentinel"


def connect(
    url: str,
    *,
    socket_timeout: float = 10.0,
    sentinel_master: str = "",
    sentinel_password: str = "",
    retry: Retry | None = None,
) -> redis.Redis:
    """A client for ``url``; nothing is sent until the first command.

    With a sentinel URL the client asks the sentinels for the current master on
    every new connection, so it follows a failover without a restart.
    """
    extra: dict[str, Any] = {} if retry is None else {"retry": retry}
    if is_sentinel(url):
        hosts, kwargs = _sentinel_kwargs(url, socket_timeout=socket_timeout)
        own = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout", *_NO_SETINFO)}
        sentinel_cls: Any = redis.sentinel.Sentinel  # typed in some redis-py releases, untyped in others
        sentinels = sentinel_cls(
            hosts, sentinel_kwargs=own | ({"password": sentinel_password} if sentinel_password else {}), **kwargs
        )
        master: redis.Redis = sentinels.master_for(sentinel_master, **extra)
        return master
    kwargs = client_kwargs(url, socket_timeout=socket_timeout) | extra
    if kwargs.get("ssl") and kwargs["ssl_cert_reqs"] != ssl.CERT_REQUIRED:
        structlog.get_logger("janitor.connection").warning(
            "tls.verification_off",
            url=mask_url(url),
            hint="anyone on the path can read and change the traffic; set ssl_ca_certs and ssl_cert_reqs=required",
        )
    return redis.Redis(**kwargs)
