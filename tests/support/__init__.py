"""Helpers shared by the test modules: no test module imports from another.

``tests.support`` itself is pure (paths and polling); the modules under it that start
servers, daemons or Celery workers are for the integration tier only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
LUA = ROOT / "janitor" / "redis_io" / "lua"
# Every server-side script: the janitor's, and the bench's own.
LUA_SOURCES = sorted(LUA.glob("*.lua")) + sorted((ROOT / "bench").glob("*.lua"))


def wait_for(check: Callable[[], Any], timeout: float, what: str = "the condition") -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
