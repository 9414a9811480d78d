"""Where a first pass's time goes, per shape of result: DECIDE over 1,000 keys of one shape.

For each shape of bench.bulkgen's realistic keyspace, writes ``--keys`` keys of that shape
alone (no TTL) to a private server and times, best of ``--repeat``:

  decide   one DECIDE call over the keys by name, as the sweep makes it (real run, no fence)
  handed   the keys it handed back to Python, by code (janitor.redis_io.scripts.Code)
  python   what the sweep then spends on those keys (rules.decide, INSPECT, ACT), per key of
           the shape
  ceilB    ceiling B (bench/ceiling_b.lua) over the same keys
  get      a Lua loop that only GETs each key: the floor every server-side sweep pays
  ascii    what DECIDE's printable-ASCII scan adds to that loop
  dots     what its scan of the dots adds (strtod's numbers, bench/README.md)
  decode   what cjson.decode adds

All in microseconds per key. ``--decide`` times another copy of decide.lua (an older one from
git, say) in place of the packaged one::

    python bench/decide_shapes.py
    git show HEAD~3:janitor/redis_io/lua/decide.lua > /tmp/decide.lua
    python bench/decide_shapes.py --decide /tmp/decide.lua --engine valkey
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

if not __package__:  # run as a script: make `janitor` and `bench` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bulkgen
from janitor import config
from janitor.celery_model.keyspace import GROUP_PREFIX, TASK_PREFIX
from janitor.dev import embedded
from janitor.operations import sweep
from janitor.redis_io import scripts
from janitor.redis_io.lease import Fence

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
# Lua loops over KEYS: a GET alone, then with one of DECIDE's checks added.
_LOOP = (
    "local find, byte = string.find, string.byte local n = 0 for i = 1, #KEYS do local v = redis.call('GET', KEYS[i]) "
)
PARTS = {
    "get": _LOOP + "n = n + #v end return n",
    "ascii": _LOOP + "if find(v, '^[\\32-\\126]*$') then n = n + 1 end end return n",
    "dots": _LOOP
    + "local at = find(v, '.', 1, true) while at do local b, _, a = byte(v, at - 1, at + 1) "
    + "if b == 45 or (b >= 48 and b <= 57 and not (a and a >= 48 and a <= 57)) then n = n + 1 end "
    + "at = find(v, '.', at + 1, true) end end return n",
    "decode": "local j = cjson.new() j.decode_invalid_numbers(false) j.decode_max_depth(100) "
    + _LOOP
    + "if pcall(j.decode, v) then n = n + 1 end end return n",
}


def items(shape: str, n: int, now: dt.datetime, rng: random.Random) -> dict[bytes, bytes]:
    """``n`` keys of one shape, as bulkgen writes them, aged over 30 days."""
    celery = bulkgen._Realistic()
    variants = [celery.variant(shape, rng) for _ in range(bulkgen.VARIANTS)]
    prefix = GROUP_PREFIX if shape == "group" else TASK_PREFIX
    out = {}
    for i in range(n):
        tid = bulkgen._uuid4(rng.getrandbits(128))
        done = now - dt.timedelta(seconds=rng.random() * 30 * 86400)
        done = done.replace(microsecond=rng.randint(1, 999_999))
        out[prefix + tid.encode()] = celery.encode(variants[i % len(variants)], tid, done.isoformat())
    return out


def best(repeat: int, setup: Callable[[], None], run: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest of ``repeat`` runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        setup()
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


class _Alternate(scripts.Tally):
    """Runs ``script`` wherever the sweep calls DECIDE; to an older reply (no group count) adds a 0 where it goes."""

    def __init__(self, script: scripts.Script, header: int) -> None:
        super().__init__()
        self.script, self.header = script, header

    def send(
        self, client: redis.Redis, script: scripts.Script, keys: list[bytes], args: list[Any], parse: Callable[[Any], T]
    ) -> scripts.Sent[T]:
        if script.name != "decide":
            return super().send(client, script, keys, args, parse)
        return super().send(client, self.script, keys, args, lambda reply: parse(self.fit(reply)))

    def fit(self, reply: list[Any]) -> list[Any]:
        return [*reply[:6], 0, *reply[6:]] if self.header == 6 else reply


class Shapes:
    """One server, the scripts loaded, and the arguments of each call."""

    def __init__(self, client: redis.Redis, source: str, now: dt.datetime, repeat: int) -> None:
        self.client, self.now, self.repeat = client, now, repeat
        self.header = 7 if "ARGV[18]" in source else 6  # the reply's totals before the rows it hands back
        self.settings = config.load({"JANITOR_REDIS_URL": "redis://127.0.0.1:1/0"})
        self.script = scripts.Script("decide", source)
        self.decide_sha = client.script_load(source)
        self.ceiling_sha = client.script_load((HERE / "ceiling_b.lua").read_text(encoding="utf-8"))
        self.parts = {name: client.script_load(lua) for name, lua in PARTS.items()}
        s = self.settings
        self.ceiling_args: list[str | int] = [f"{now.timestamp() * 1000:.3f}", s.result_ttl * 1000]
        self.ceiling_args += [s.failure_ttl * 1000, s.pending_ttl * 1000, s.future_tolerance * 1000]
        self.ceiling_args += [s.max_value_bytes, s.group_ttl * 1000]

    def new_pass(self) -> sweep._Pass:
        report = sweep.SweepReport(dry_run=False, tally=_Alternate(self.script, self.header))
        run = sweep._Pass(self.client, self.settings, report, Fence, lambda: self.now)
        run.retention = dataclasses.replace(run.retention, deadline_us=0)  # one call over all the keys of a shape
        return run

    def whole(self, keys: list[bytes]) -> None:
        run = self.new_pass()
        run._decide(keys=keys)
        run.flush()

    def row(self, shape: str, data: dict[bytes, bytes]) -> str:
        client, keys, repeat = self.client, list(data), self.repeat
        per_key = 1e6 / len(keys)

        def load() -> None:
            client.flushall()
            client.mset(data)

        r = self.new_pass().retention
        now_us = (self.now - sweep.EPOCH) // dt.timedelta(microseconds=1)
        args = scripts.decide_argv(
            r, cursor=b"", count=0, match="", limit=len(keys), token="", dry_run=False, now_us=now_us
        )
        decide_s, reply = best(
            repeat, load, lambda: client.evalsha(self.decide_sha, 1 + len(keys), b"lease", *keys, *args)
        )
        handed = collections.Counter(scripts.Code(int(code)).name for code in reply[self.header + 1 :: 3])
        # The sweep's whole work on these keys by name: DECIDE, then Python for what it handed back.
        whole_s, _ = best(repeat, load, lambda: self.whole(keys))
        count = 10 * len(keys)
        ceiling_s, _ = best(repeat, load, lambda: client.evalsha(self.ceiling_sha, 0, 0, count, *self.ceiling_args))
        load()
        timed = {name: self.loop(sha, keys) for name, sha in self.parts.items()}
        size = sum(map(len, data.values())) / len(data)
        row = f"{shape:<9} {size:>6.0f} {decide_s * per_key:>7.1f} {(whole_s - decide_s) * per_key:>7.1f} "
        row += f"{ceiling_s * per_key:>6.1f} {timed['get'] * per_key:>6.1f} "
        row += " ".join(f"{(timed[name] - timed['get']) * per_key:>6.1f}" for name in PARTS if name != "get")
        return row + "  " + (", ".join(f"{code} {n}" for code, n in sorted(handed.items())) or "-")

    def loop(self, sha: str, keys: list[bytes]) -> float:
        return best(self.repeat, lambda: None, lambda: self.client.evalsha(sha, len(keys), *keys))[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1000, help="keys per shape (one DECIDE call over all)")
    parser.add_argument("--engine", choices=embedded.ENGINES, default="redis")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--decide", type=Path, help="another decide.lua to time (default: the packaged one)")
    args = parser.parse_args(argv)
    packaged = Path(scripts.__file__).resolve().parent / "lua" / "decide.lua"
    source = (args.decide or packaged).read_text(encoding="utf-8")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rng = random.Random(3)
    with embedded.running(args.engine) as server:
        client = server.client()
        shapes = Shapes(client, source, now, args.repeat)
        version = client.info("server")
        print(
            f"{server.engine} {version.get('valkey_version') or version.get('redis_version')}, "
            f"{args.keys:,} keys per shape, us per key (best of {args.repeat}); "
            f"decide.lua: {args.decide or 'packaged'}"
        )
        head = f"{'shape':<9} {'bytes':>6} {'decide':>7} {'python':>7} {'ceilB':>6} "
        head += " ".join(f"{name:>6}" for name in PARTS) + "  handed"
        print(head)
        print("-" * len(head))
        for shape in bulkgen.SHARES:
            print(shapes.row(shape, items(shape, args.keys, now, rng)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
