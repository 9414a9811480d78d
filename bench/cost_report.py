"""Every cost figure of the janitor side by side, in one run, against its target.

Runs the three benches, each on its own private servers, one after the other (never two at
once, so none disturbs another's timings), and prints one table:

1. watch mode (``watch_bench.py``), Redis 7 and Valkey 8: write-to-TTL p50/p99, commands the
   janitor sends per new result, Redis CPU it adds;
2. an idle daemon (``idle_commands.py --compress``): commands a day, counted by the server
   with MONITOR, over a whole day's schedule run ``--compress`` times faster;
3. the first pass (``sweep_bench.py``), Redis 7 and Valkey 8, on the realistic and the plain
   keyspace: keys/s and Redis CPU as ratios of ceiling B measured in the same run, the GET
   client's p99 added over a bare SCAN, commands over the batch guard.

Each bench's own output is kept in ``--out`` after the table.

    python bench/cost_report.py                                # about 40 minutes
    python bench/cost_report.py --keys 200000 --watch-seconds 20 --compress 480
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from janitor.dev import embedded

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"


def run(args: list[str], log: list[str]) -> str:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    took = time.monotonic() - started
    log.append(f"$ python {' '.join(args)}   ({took:.0f} s, exit {proc.returncode})\n{proc.stdout}")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    if found is None:
        raise SystemExit(f"no {pattern!r} in:\n{text}")
    return float(found.group(1).replace(",", ""))


def watch(engine: str, seconds: float, log: list[str]) -> dict[str, float]:
    text = run(["bench/watch_bench.py", "--engine", engine, "--seconds", str(seconds)], log)
    return {
        "p50_ms": number(r"p50 (\d+) ms", text),
        "p99_ms": number(r"p99 (\d+) ms", text),
        "missed": number(r"([\d,]+) without a TTL", text),
        "per_result": number(r"commands per new result\s+([\d.]+) sent", text),
        "cpu_added_s": number(r"([+-][\d.]+) s added", text),
    }


def idle(compress: float, log: list[str]) -> float:
    minutes = 1440 / compress + 1
    text = run(
        ["bench/idle_commands.py", "--compress", str(compress), "--minutes", f"{minutes:.2f}", "--warmup", "5"], log
    )
    return number(r"(?m)^total\s+\d+\s+\d+\s+(\d+)", text)


def first_pass(engine: str, keys: int, log: list[str]) -> list[dict[str, Any]]:
    text = run(
        [
            "bench/sweep_bench.py",
            "--engine",
            engine,
            "--keys",
            str(keys),
            "--rows",
            "scan,lua,janitor1",
            "--keyspace",
            "realistic,plain",
            "--json",
        ],
        log,
    )
    docs = json.loads(text)
    out = []
    for doc in docs if isinstance(docs, list) else [docs]:
        rows = {r["name"]: r for r in doc["rows"]}
        lua, j1, scan = rows["lua"], rows["janitor1"], rows["scan"]
        out.append(
            {
                "engine": f"{engine} {doc['server_version']}",
                "keyspace": doc["keyspace"],
                "keys_ratio": j1["keys_per_s"] / lua["keys_per_s"],
                "cpu_ratio": j1["redis_cpu_s"] / lua["redis_cpu_s"],
                "p99_added_ms": j1["probe_p99_ms"] - scan["probe_p99_ms"],
                "over_guard": j1["slow_over_guard"],
            }
        )
    return out


def ok(passed: bool) -> str:
    return "yes" if passed else "NO"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000, help="result keys of the first-pass benches")
    parser.add_argument("--watch-seconds", type=float, default=60, help="seconds each watch phase writes")
    parser.add_argument("--compress", type=float, default=240, help="the idle day runs this many times faster")
    parser.add_argument("--out", default=str(BENCH / "results" / "cost-report.txt"))
    args = parser.parse_args()
    engines = embedded.available_engines()
    log: list[str] = []
    watched = {e: watch(e, args.watch_seconds, log) for e in engines}
    per_day = idle(args.compress, log)
    passes = [row for e in engines for row in first_pass(e, args.keys, log)]

    lines = ["cost report (targets from issue 17)", ""]
    head = f"{'p50 ms':>7} {'p99 ms':>7} {'no TTL':>7} {'cmds/result':>12} {'CPU added s':>12}"
    lines.append(f"{'watch mode, 1,000 results/s':<34} {head}  target: p99 <= 1 s, <= 0.05 commands")
    for engine, w in watched.items():
        met = w["p99_ms"] <= 1000 and w["per_result"] <= 0.05 and w["missed"] == 0
        lines.append(
            f"{engine:<34} {w['p50_ms']:>7.0f} {w['p99_ms']:>7.0f} {w['missed']:>7.0f} {w['per_result']:>12.4f}"
            f" {w['cpu_added_s']:>12.2f}  {ok(met)}"
        )
    lines += ["", f"{'idle daemon, defaults, 5,000 clean results':<44} {'commands a day':>15}  target: <= 3,000"]
    counted = f"(server's count, one day run {args.compress:g}x faster)"
    lines.append(f"{counted:<44} {per_day:>15,.0f}  {ok(per_day <= 3000)}")
    head = f"{'keys/s':>7} {'CPU':>7} {'p99 +ms':>8} {'>guard':>7}"
    title = f"first pass, {args.keys:,} result keys"
    lines += ["", f"{title:<34} {head}  target: >= 0.8x, <= 1.2x, <= 2 ms, 0"]
    for p in passes:
        met = p["keys_ratio"] >= 0.8 and p["cpu_ratio"] <= 1.2 and p["p99_added_ms"] <= 2 and p["over_guard"] == 0
        lines.append(
            f"{p['engine'] + ', ' + p['keyspace']:<34} {p['keys_ratio']:>6.2f}x {p['cpu_ratio']:>6.2f}x"
            f" {p['p99_added_ms']:>8.1f} {p['over_guard']:>7}  {ok(met)}"
        )
    lines.append("(keys/s and CPU: the janitor's first pass over ceiling B, the plain Lua sweep, in the same run;")
    lines.append(
        " p99 +ms: a 1 ms GET client's p99 during the pass minus during a bare SCAN; >guard: calls over the guard)"
    )
    report = "\n".join(lines)
    print(report)
    Path(args.out).write_text(report + "\n\n" + "\n".join(log))
    print(f"\nevery bench's own output: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
