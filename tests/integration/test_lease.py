"""The lease on a real server: one holder, renewal, release, epochs, and the fence in ACT."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import redis

from janitor import config
from janitor.dev import demo
from janitor.operations.sweep import sweep
from janitor.redis_io.lease import NOT_HELD, Change, Lease


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lease(client: redis.Redis, ttl: float = 30.0, prefix: str = "", clock: Clock | None = None) -> Lease:
    lease = Lease.for_prefix(client, prefix, ttl)
    if clock is not None:
        lease.clock = clock
    return lease


class TestAcquire:
    def test_one_holder(self, client: redis.Redis) -> None:
        """The first taker leads; the second follows and is told when to look again."""
        a, b = _lease(client), _lease(client)
        assert a.step()[0] is Change.ACQUIRED
        change, delay = b.step()
        assert change is Change.FOLLOWING
        assert 0 < delay <= 10
        assert a.held()
        assert not b.held()
        assert client.get(b"celery-janitor:lease") == a.fence().token.encode()

    def test_a_follower_looks_again_just_after_the_lease_would_lapse(self, client: redis.Redis) -> None:
        """A dead leader's lease is taken over at most one TTL after its last renewal: a follower polls
        no later than 10 ms after the holder's lease expires, and takes it at that poll."""
        a, b = _lease(client, ttl=30), _lease(client, ttl=30)
        a.step()
        client.pexpire(a.key, 1500)  # the leader renewed 28.5 s ago and then died
        change, delay = b.step()
        assert change is Change.FOLLOWING
        assert delay <= 1.5 + 0.01  # not ttl/3 (10 s): what the lease had left, plus 10 ms
        client.delete(a.key)  # lapsed
        assert b.step()[0] is Change.ACQUIRED

    def test_epoch_counts_acquisitions_only(self, client: redis.Redis) -> None:
        """Followers polling never bump the fencing counter; each acquisition does."""
        a, b = _lease(client), _lease(client)
        a.step()
        for _ in range(5):
            b.step()
        assert (a.epoch, client.get(b"celery-janitor:epoch")) == (1, b"1")
        assert a.release()
        b.step()
        assert b.epoch == 2

    def test_key_follows_the_result_prefix(self, client: redis.Redis) -> None:
        """Two Celery apps (global_keyprefix) on one Redis get one leader each."""
        a, b = _lease(client, prefix="app1"), _lease(client, prefix="app2:")
        assert a.step()[0] is Change.ACQUIRED
        assert b.step()[0] is Change.ACQUIRED
        assert client.exists(b"app1_celery-janitor:lease", b"app2:celery-janitor:lease") == 2


class TestRenewAndRelease:
    def test_renewal_extends_and_local_validity_lapses(self, client: redis.Redis) -> None:
        """Held for ttl after the start of the last renewal, not longer, by the local clock."""
        clock = Clock()
        lease = _lease(client, ttl=30, clock=clock)
        lease.step()
        clock.now += 20
        assert lease.step() == (Change.KEPT, 10)
        clock.now += 29
        assert lease.held()
        clock.now += 2
        assert not lease.held()

    def test_lost_when_someone_else_holds_it(self, client: redis.Redis) -> None:
        """Renewal compares the token: after a takeover it reports the loss and writes nothing."""
        lease = _lease(client)
        lease.step()
        client.set(lease.key, "7:rival")
        assert lease.step()[0] is Change.LOST
        assert not lease.held()
        assert client.get(lease.key) == b"7:rival"

    def test_release_only_deletes_our_own_lease(self, client: redis.Redis) -> None:
        """Compare-and-delete: releasing after a takeover leaves the new leader's lease alone."""
        a = _lease(client)
        a.step()
        client.set(a.key, "9:rival")
        assert not a.release()
        assert client.get(a.key) == b"9:rival"
        b = _lease(client)
        client.delete(b.key)
        b.step()
        assert b.release()
        assert not client.exists(b.key)


class TestFence:
    def test_never_led_means_every_batch_is_refused(self, client: redis.Redis) -> None:
        """A fence from an instance that never held the lease can never match."""
        assert _lease(client).fence().token == NOT_HELD

    def test_an_ex_leader_cannot_write(self, client: redis.Redis, settings: config.Settings) -> None:
        """After a takeover, the old leader's sweep is refused by ACT before any write."""
        now = dt.datetime.now(dt.UTC)
        for i in range(50):
            client.set(
                f"celery-task-meta-{i}", json.dumps(demo.task_meta(str(i), "SUCCESS", now - dt.timedelta(days=5)))
            )
        old = _lease(client)
        old.step()
        client.set(old.key, "2:new-leader")
        with pytest.raises(redis.ResponseError, match="FENCED"):
            sweep(client, settings, fence=old.fence)
        assert client.dbsize() == 52  # the results, the lease and the epoch counter
        assert all(client.ttl(f"celery-task-meta-{i}") == -1 for i in range(50))
