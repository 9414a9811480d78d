"""A realistic dirty Celery keyspace, in Celery's exact formats, for the demo and the bench.

What a Redis looks like after weeks of ``result_expires=None``: results of
every state and serializer and age, groups, chords, leaked pidbox reply
lists, broker queues and ``unacked``, plus keys that are not Celery's.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import pickle
import random
import uuid
import zlib
from typing import Any

import msgpack
import redis
import yaml

from janitor.celery_model.keyspace import GROUP_PREFIX, KOMBU_SEP, TASK_PREFIX

SEP = KOMBU_SEP
READY = ("SUCCESS", "SUCCESS", "SUCCESS", "SUCCESS", "FAILURE", "REVOKED")


def task_meta(
    task_id: str, status: str, date_done: dt.datetime | None, *, naive: bool = False, **extra: Any
) -> dict[str, Any]:
    """A meta dict with Celery's field order (``Backend._get_result_meta``)."""
    result: Any = 4
    if status == "FAILURE":
        result = {"exc_type": "ValueError", "exc_message": ["kaboom"], "exc_module": "builtins"}
    elif status == "STARTED":
        result = {"pid": 4242, "hostname": "w1@demo"}
    done = None
    if date_done is not None:
        done = (date_done.replace(tzinfo=None) if naive else date_done).isoformat()
    meta: dict[str, Any] = {
        "status": status,
        "result": result,
        "traceback": "Traceback (most recent call last): ..." if status == "FAILURE" else None,
        "children": [],
        "date_done": done,
    }
    meta.update(extra)
    meta["task_id"] = task_id
    return meta


def encode(meta: dict[str, Any], serializer: str) -> bytes:
    """Bytes as kombu's serializers (and celery 5.7 compression) store them."""
    if serializer == "json":
        return json.dumps(meta).encode()
    if serializer == "pickle":
        return pickle.dumps(meta, protocol=4)
    if serializer == "msgpack":
        return bytes(msgpack.packb(meta))
    if serializer == "yaml":
        return yaml.safe_dump(meta).encode()
    if serializer == "gzip":
        return b"\x00celery-compressed\x00application/x-gzip\x00" + zlib.compress(json.dumps(meta).encode())
    raise ValueError(serializer)


def fill(
    client: redis.Redis,
    *,
    results: int = 20_000,
    other_ratio: float = 0.2,
    now: dt.datetime | None = None,
    max_age_days: float = 14,
    seed: int = 7,
    prefix: str = "",
) -> dict[str, int]:
    """Write a dirty keyspace; returns how many keys of each family were written."""
    rng = random.Random(seed)  # noqa: S311 - reproducible fixture data, not secrets
    now = now or dt.datetime.now(dt.UTC)
    rp = prefix.encode()
    written: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)

    def put(family: str, key: bytes, value: bytes, ttl: int | None = None) -> None:
        pipe.set(key, value, ex=ttl)
        written[family] = written.get(family, 0) + 1
        if len(pipe) >= 2000:
            pipe.execute()

    for _ in range(results):
        tid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        roll = rng.random()
        status = rng.choice(READY) if roll < 0.9 else rng.choice(("STARTED", "RETRY", "PROGRESS"))
        done = now - dt.timedelta(days=rng.uniform(0, max_age_days)) if status in READY else None
        serializer = rng.choices(("json", "pickle", "msgpack", "yaml", "gzip"), (85, 6, 4, 2, 3))[0]
        meta = task_meta(tid, status, done, naive=rng.random() < 0.2)
        ttl = 86400 if rng.random() < 0.1 else None  # a few written while result_expires was still set
        put(f"result:{status}", rp + TASK_PREFIX + tid.encode(), encode(meta, serializer), ttl)

    for _ in range(max(1, results // 100)):
        gid = str(uuid.UUID(int=rng.getrandbits(128), version=4)).encode()
        members = [[[str(uuid.uuid4()), None], None] for _ in range(3)]
        put("group", rp + GROUP_PREFIX + gid, json.dumps({"result": members}).encode())
        pipe.zadd(
            rp + GROUP_PREFIX + gid + b".j", {json.dumps([1, str(uuid.uuid4()), "SUCCESS", i]): i for i in range(2)}
        )
        put("chord", rp + GROUP_PREFIX + gid + b".s", b"3")
        pipe.sadd(rp + GROUP_PREFIX + gid + b".d", b"a:0", b"b:1")
        put("chord_claim", rp + GROUP_PREFIX + gid + b".c", b"done", 300)
        written["chord"] += 2

    for _ in range(max(1, results // 1000)):
        oid = str(uuid.uuid4()).encode()
        pipe.rpush(oid + b".reply.celery.pidbox", json.dumps({"body": "e30=", "headers": {}}))
        written["pidbox_reply"] = written.get("pidbox_reply", 0) + 1

    _broker(pipe, rng, now, written)
    for i in range(int(results * other_ratio)):
        put("other", f"app:session:{i}".encode(), b"x" * rng.randint(10, 200))
    pipe.execute()
    return written


def _broker(pipe: Any, rng: random.Random, now: dt.datetime, written: dict[str, int]) -> None:
    """Queues, bindings and unacked entries: keys the sweep must never touch."""
    pipe.sadd("_kombu.binding.celery", f"celery{SEP}{SEP}celery")
    for i in range(50):
        tag = str(uuid.uuid4())
        body = base64.b64encode(json.dumps([[i], {}, {}]).encode()).decode()
        msg = {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "demo.add", "id": str(uuid.uuid4()), "eta": None, "retries": 0},
            "properties": {
                "delivery_tag": tag,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": "celery"},
            },
        }
        if i < 40:
            pipe.lpush("celery", json.dumps(msg))
        else:
            pipe.hset("unacked", tag, json.dumps([msg, "", "celery"]))
            pipe.zadd("unacked_index", {tag: now.timestamp() - rng.uniform(0, 7200)})
    written["broker"] = 4
