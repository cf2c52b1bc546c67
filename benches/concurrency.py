#!/usr/bin/env python3
"""The concurrency table of docs/performance.md, run by hand (not in CI):
`statevault-bench --concurrency LEVELS --json`, printed as one Markdown table
(a row per workload and level; statevault, rusqlite and Redis side by side),
then what each side's call does, with the raw JSON written beside it.

    cargo build --release -p statevault-bench && python3 benches/concurrency.py [--levels 1,8,64] [--only NAMES] [--out DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "statevault-bench")
SIDES = [("statevault", "statevault"), ("rusqlite", "rusqlite"), ("redis", "Redis"),
         ("redis_durable", "Redis, fsync always")]


def cell(figures):
    """ops/s, p50 and p99 (µs) and peak RSS (MiB) of one side, or why there are none."""
    if figures is None:
        return "—"
    if "skipped" in figures:
        return f"skipped: {figures['skipped']}"
    rss = figures.get("peak_rss_mib")
    p50 = figures["p50_us"]
    return (f"{figures['ops_per_sec']:,.0f}/s · {p50:,.{1 if p50 < 10 else 0}f} / {figures['p99_us']:,.0f} µs · "
            f"{'—' if rss is None else f'{rss:.0f}'} MiB")


def run(args):
    """Runs the bench and writes its JSON to args.out."""
    cmd = [BIN, "--json", "--concurrency", args.levels]
    if args.only:
        cmd += ["--only", args.only]
    if args.quick:
        cmd.append("--quick")
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "concurrency.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,64", help="callers at each level")
    parser.add_argument("--only", help="comma-separated workloads (all when absent)")
    parser.add_argument("--quick", action="store_true", help="short runs, noisier figures")
    parser.add_argument("--out", default="target/compare", help="where the raw JSON goes")
    parser.add_argument("--from", dest="source", help="print the tables of this JSON instead of running")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    if args.source:
        with open(args.source) as f:
            report = json.load(f)
    else:
        report = run(args)


    m, c = report["machine"], report["concurrency"]
    when = (f"tables of {args.source}" if args.source else
            f"{time.strftime('%Y-%m-%d %H:%M')}; load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after")
    print(f"Machine: {m['cpu']} ({m['cores']} cores), {m['os']}, SQLCipher {m['sqlcipher']}; {when}; "
          f"`python3 benches/concurrency.py --levels {args.levels}`; {c['seconds_per_figure']} s per figure.\n")
    print(f"- statevault: {c['statevault']}")
    print(f"- rusqlite: {c['rusqlite']}")
    r = c["redis"]
    print(f"- Redis {r.get('version') or ''}: {r['server']}; durable: {r['durable_server']}; {r['client']}\n")
    print("Each cell: ops/s; p50 / p99 latency of one call; peak RSS of the process doing the work "
          "(the bench's for statevault and rusqlite, the server's for Redis).\n")
    print("| workload | callers | " + " | ".join(title for _, title in SIDES) + " |")
    print("| --- | --- |" + " --- |" * len(SIDES))
    for name, w in c["workloads"].items():
        for level in w["levels"]:
            print(f"| `{name}` | {level['callers']} | " + " | ".join(cell(level.get(key)) for key, _ in SIDES) + " |")
    print("\nWhat one call does on each side:\n")
    for name, w in c["workloads"].items():
        print(f"- `{name}`: statevault: {w['statevault']}; rusqlite: {w['rusqlite']}; Redis: `{w['redis']}`"
              + (" (also against the fsync-always server)" if w["redis_durable"] else ""))

if __name__ == "__main__":
    main()
