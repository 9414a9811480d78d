"""Fixtures both tiers use. The real servers are in tests/integration/conftest.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

# hypothesis is imported here, not first by its pytest plugin at the end of a run:
# that late import hits CPython 3.11.7's "AST constructor recursion depth mismatch"
# after the real-Celery tests, failing a run whose tests all passed.
import hypothesis  # noqa: F401
import pytest
import structlog
from prometheus_client import CollectorRegistry

from janitor.service.metrics import Metrics


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A test that configures logging (any in-process CLI call does) must not filter the next test's logs."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.WARNING)


@pytest.fixture(name="registry")
def _registry() -> CollectorRegistry:
    """A fresh Prometheus registry: no series left over from another test."""
    return CollectorRegistry()


@pytest.fixture(name="metrics")
def _metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)
