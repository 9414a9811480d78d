"""Sizes and durations as people read them, for reports, logs and the status page."""

from __future__ import annotations


def size(n: float | None) -> str:
    """Bytes for people: 1.5 MiB."""
    if n is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover - the loop returns at GiB


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = abs(seconds)
    if s < 120:
        return f"{seconds:.0f} s"
    if s < 7200:
        return f"{seconds / 60:.0f} min"
    if s < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
