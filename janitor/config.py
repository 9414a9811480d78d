"""Settings: environment only (12-factor), ``JANITOR_`` prefix, validated at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from janitor.connection import mask_url

# Where the Redis URL may come from, in order. Celery's own variables come last
# and only count when they name a Redis server.
URL_SOURCES = ("JANITOR_REDIS_URL", "REDIS_URL", "UPSTASH_REDIS_URL", "CELERY_RESULT_BACKEND", "CELERY_BROKER_URL")
_REDIS_SCHEMES = {"redis", "rediss", "unix", "socket"}

Seconds = Annotated[int, Field(ge=1, le=10 * 365 * 86400)]


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it and says what to do."""


class Settings(BaseSettings):
    """Every setting the janitor reads. Env name = ``JANITOR_`` + field name, upper case."""

    model_config = SettingsConfigDict(env_prefix="JANITOR_", extra="ignore", frozen=True)

    redis_url: str = Field(default="", repr=False)
    redis_url_source: str = Field(default="", exclude=True)
    key_prefix: str = ""
    broker_key_prefix: str = ""
    result_ttl: Seconds = 86400
    failure_ttl: Seconds = 604800
    group_ttl: Seconds = 86400
    pending_ttl: Seconds = 604800
    reply_ttl: Seconds = 300
    cap_ttl: bool = False
    future_tolerance: Annotated[int, Field(ge=0)] = 300
    scan_count: Annotated[int, Field(ge=10, le=100_000)] = 1000
    batch_bytes: Annotated[int, Field(ge=64 * 1024, le=512 * 1024 * 1024)] = 4 * 1024 * 1024
    max_value_bytes: Annotated[int, Field(ge=1024, le=512 * 1024 * 1024)] = 1024 * 1024
    max_batch_ms: Annotated[float, Field(ge=0.5, le=1000)] = 5.0
    max_keys_per_second: Annotated[int, Field(ge=0)] = 0
    dry_run: bool = False
    socket_timeout: Annotated[float, Field(gt=0, le=600)] = 10.0
    log_level: str = "info"
    log_format: str = "auto"

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value.lower() not in {"auto", "json", "console"}:
            raise ValueError("must be one of auto, json, console")
        return value.lower()

    @property
    def masked_url(self) -> str:
        return mask_url(self.redis_url)


def find_redis_url(environ: Mapping[str, str]) -> tuple[str, str]:
    """Return ``(url, variable it came from)``, or ``("", "")`` when none is set."""
    for name in URL_SOURCES:
        url = environ.get(name, "").strip()
        if not url:
            continue
        if name.startswith("CELERY_") and urlsplit(url).scheme not in _REDIS_SCHEMES:
            continue
        return url, name
    return "", ""


def load(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build settings from the environment; raise :class:`ConfigError` with one clear line."""
    env = os.environ if environ is None else environ
    url, source = find_redis_url(env)
    values: dict[str, object] = {
        name: env[f"JANITOR_{name.upper()}"] for name in Settings.model_fields if f"JANITOR_{name.upper()}" in env
    }
    values.update(redis_url=url, redis_url_source=source, **overrides)
    try:
        # model_validate skips pydantic-settings' own os.environ read: `env` is the one source.
        return Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        shown = "<hidden>" if field == "redis_url" else repr(err.get("input"))
        raise ConfigError(
            f"invalid setting JANITOR_{field.upper()}={shown}: {err['msg']}; fix it or unset it to use the default"
        ) from None
