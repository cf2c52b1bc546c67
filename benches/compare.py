#!/usr/bin/env python3
"""The performance report, run by hand (not in CI): every workload of
`statevault bench` beside its physical limit (measured in the same run),
the same suite over plain files (SQLCipher's cost), and the peers users
would otherwise run (benches/peers.py: diskcache, Redis). Prints a Markdown
table for the README and writes the raw JSON beside it.

    cargo build --release -p statevault-bench && python3 benches/compare.py [--quick] [--out DIR]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.join(HERE, "..", "target", "release", "statevault-bench")

# Which peer figures each workload (or variant) is compared with
# (microseconds per op): a peer sits beside the statevault figure that has
# done the same when the call returns. A write-behind set (buffered, written
# by a later flush) beside Redis keeping it in memory; a set committed before
# it returns beside diskcache (which commits every set) and Redis writing its
# append-only file before replying.
PEERS = {
    "cache_l2_get": ["diskcache_get", "redis_get"],
    "cache_l1_get": ["diskcache_get", "redis_get"],
    "cache_set": ["redis_set"],
    "cache_set (each committed)": ["diskcache_set", "redis_set_aof"],
    "ratelimit_check": ["redis_token_bucket"],
    "ratelimit_check_shared": ["redis_token_bucket"],
}


def rows(workloads):
    """(name, figures) of every workload, then of each of its variants."""
    for name, w in workloads.items():
        yield name, w
        for how, v in w.get("variants", {}).items():
            yield f"{name} ({how})", v


def run_json(cmd):
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="statevault bench --quick, 1 s per peer figure")
    parser.add_argument("--out", default="target/compare", help="where the raw JSON goes")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    encrypted = run_json([BIN, "--json", *quick])
    plain = run_json([BIN, "--json", "--plain", *quick])
    peers = run_json([sys.executable, os.path.join(HERE, "peers.py"), "--seconds", "1" if args.quick else "3"])
    for name, data in (("encrypted", encrypted), ("plain", plain), ("peers", peers)):
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=2)

    m = encrypted["machine"]
    print(f"Machine: {m['cpu']} ({m['cores']} cores), {m['os']}, SQLCipher {m['sqlcipher']}; "
          f"{time.strftime('%Y-%m-%d')}; load average {os.getloadavg()[0]:.1f}; "
          f"`python3 benches/compare.py{' --quick' if args.quick else ''}`.\n")
    print(f"open: {encrypted['open_ms']:.2f} ms (rusqlite {encrypted['open_ms_rusqlite']:.2f} ms, "
          f"ratio {encrypted['open_ratio']:.2f}); plain file {plain['open_ms']:.2f} ms\n")
    print("| workload | statevault ops/s | limit ops/s (same run) | ratio | peak RSS MiB | plain-file ops/s "
          "| encrypted / plain | peers (µs per op) | the limit's work |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    slowdowns = []
    plain_rows = dict(rows(plain["workloads"]))
    for name, w in rows(encrypted["workloads"]):
        p = plain_rows.get(name, {})
        ours, limit = w["ops_per_sec"], w["baseline_ops_per_sec"]
        relative = ours / p["ops_per_sec"] if p.get("ops_per_sec") else None
        if relative:
            slowdowns.append(relative)
        peer_text = []
        for peer in PEERS.get(name, []):
            fig = peers.get(peer, {})
            if "us_per_op" in fig:
                peer_text.append(f"{peer} {fig['us_per_op']:.1f} (ours {1e6 / ours:.2f})")
        rss = w.get("peak_rss_mib", encrypted["workloads"].get(name.split(" ")[0], {}).get("peak_rss_mib"))
        print(f"| `{name}` | {ours:,.0f} | {limit:,.0f} | {w['ratio']:.2f} | {rss or '—'} | "
              f"{p.get('ops_per_sec', 0):,.0f} | {relative or 0:.2f} | {'; '.join(peer_text) or '—'} "
              f"| {w.get('baseline', '')} |")
    if slowdowns:
        geo = 1.0
        for s in slowdowns:
            geo *= s
        geo **= 1 / len(slowdowns)
        print(f"\nEncrypted / plain over the suite (geometric mean): {geo:.2f} "
              f"({(1 - geo) * 100:.0f} % slower encrypted)")
    print(f"\nPython {peers.get('python')}, Redis {peers.get('redis_version', '—')}, "
          f"values of {peers.get('value_bytes')} bytes; raw JSON in {args.out}/ ({platform.node()})")


if __name__ == "__main__":
    main()
