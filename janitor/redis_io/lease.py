"""One active sweeper among several janitors: a lease in Redis, with a fencing token.

Acquire is one script (:func:`janitor.redis_io.scripts.acquire`): when the lease key is
free, INCR the epoch key and SET the lease to ``<epoch>:<random>`` with a TTL
(SET NX PX plus a fencing counter, atomically, so followers polling the lease
never bump the epoch). Renewal and release compare the token first. The token
doubles as the fence: every destructive batch (the ACT script) refuses to run
unless the lease key still holds it, so an ex-leader that was paused past its
TTL cannot write.

Locally, leadership ends ``ttl`` after the *start* of the last successful
renewal; the server's TTL started later, so we always give up first.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from redis.crc import key_slot

from janitor.celery_model.keyspace import result_prefix
from janitor.redis_io import scripts

LEASE_SUFFIX = b"celery-janitor:lease"
EPOCH_SUFFIX = b"celery-janitor:epoch"
# Never a value we write, so a fence from an instance that never led always fails.
NOT_HELD = "not-held"
FENCE_NONE = b"celery-janitor:no-fence"


@dataclass(frozen=True)
class Fence:
    """The lease key and token every destructive script checks inside Redis before it writes."""

    key: bytes = FENCE_NONE
    token: str = ""


class Change(enum.Enum):
    ACQUIRED = "acquired"
    KEPT = "kept"
    LOST = "lost"
    FOLLOWING = "following"


@dataclass
class Lease:
    """This instance's view of the lease; safe to read from any thread."""

    client: redis.Redis
    key: bytes
    epoch_key: bytes
    ttl: float
    clock: Callable[[], float] = time.monotonic
    tally: scripts.Tally = field(default_factory=scripts.Tally)
    _token: str = ""  # the token while we believe we hold the lease
    _fence_token: str = NOT_HELD  # the last token we wrote, kept after a loss so ACT is refused
    _valid_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_prefix(cls, client: redis.Redis, key_prefix: str, ttl: float, *, cluster: bool = False) -> Lease:
        """Lease key next to the app's result keys, so two apps sharing a Redis get one leader each.

        On a cluster ACQUIRE's two keys must share a slot: a hash-tagged prefix gives them
        the results' slot (so every sweep batch is fenced in its script); without one they
        get a tag of their own.
        """
        prefix = result_prefix(key_prefix)
        key, epoch = prefix + LEASE_SUFFIX, prefix + EPOCH_SUFFIX
        if cluster and key_slot(key) != key_slot(epoch):
            key, epoch = b"{" + key + b"}", b"{" + key + b"}:epoch"
        return cls(client, key, epoch, ttl)

    @property
    def ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    def held(self) -> bool:
        with self._lock:
            return bool(self._token) and self.clock() < self._valid_until

    @property
    def epoch(self) -> int:
        """The fencing counter of our current or last lease (0 if we never led)."""
        head = self._fence_token.partition(":")[0]
        return int(head) if head.isdigit() else 0

    def fence(self) -> Fence:
        """What ACT must find in the lease key; checked by Redis, not by us."""
        return Fence(self.key, self._fence_token)

    def step(self) -> tuple[Change, float]:
        """Renew the lease we hold, or try to take a free one; return the change and when to call again."""
        started = self.clock()
        if self._token:
            if scripts.renew(self.tally, self.client, lease=self.key, token=self._token, ttl_ms=self.ttl_ms):
                with self._lock:
                    self._valid_until = started + self.ttl
                return Change.KEPT, self.ttl / 3
            with self._lock:
                self._token = ""
            return Change.LOST, 0.0
        reply = scripts.acquire(
            self.tally, self.client, lease=self.key, epoch=self.epoch_key, nonce=uuid.uuid4().hex, ttl_ms=self.ttl_ms
        )
        if reply.token:
            with self._lock:
                self._token = self._fence_token = reply.token
                self._valid_until = started + self.ttl
            return Change.ACQUIRED, self.ttl / 3
        # Poll again just after the holder's lease would expire: a failover then
        # takes at most one TTL after the leader's last renewal.
        remaining = max(reply.holder_pttl, 0) / 1000
        return Change.FOLLOWING, min(self.ttl / 3, remaining + 0.01)

    def release(self) -> bool:
        """Delete the lease if it is still ours, so a follower takes over at once."""
        with self._lock:
            token, self._token = self._token, ""
        if not token:
            return False
        return scripts.release(self.tally, self.client, lock=self.key, token=token)


@dataclass
class Keeper:
    """Calls :meth:`Lease.step` on time, backing off (with a cap) while Redis fails."""

    lease: Lease
    stop: threading.Event
    on_change: Callable[[Change], None]
    on_success: Callable[[], None]
    on_error: Callable[[BaseException], None]
    max_backoff: float = 30.0
    _nudged: threading.Event = field(default_factory=threading.Event)

    def nudge(self) -> None:
        """Renew (or find the lease gone) now rather than at the next turn: Redis came back, a
        script was fenced, or the daemon is stopping."""
        self._nudged.set()

    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                change, delay = self.lease.step()
            except Exception as exc:  # noqa: BLE001 - any failure: report, back off, keep the thread alive
                failures += 1
                self.on_error(exc)
                delay = min(self.max_backoff, 0.25 * 2**failures)
            else:
                failures = 0
                self.on_success()
                self.on_change(change)
            self._nudged.wait(delay)
            self._nudged.clear()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="janitor-lease", daemon=True)
        thread.start()
        return thread
