"""structlog set-up: JSON lines off a terminal, readable console on one.

Everything (our events and the stdlib loggers of redis and apscheduler) goes
through one stdlib handler, so lines from different threads never interleave.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from janitor.redis_io.connection import mask_url


def _mask_secrets(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: any string that carries a URL password is masked."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = mask_url(value)
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Route structlog and stdlib loggers to stderr in one format at ``level``."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer(sort_keys=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _mask_secrets,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    # Third-party loggers speak only when something is wrong.
    for noisy in ("apscheduler", "redis", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
