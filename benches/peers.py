#!/usr/bin/env python3
"""What users would otherwise run, measured on this machine: Python diskcache
(get/set) and Redis on loopback (GET/SET and a token-bucket Lua script), one
client, values of about 1 KiB like `statevault bench`'s cache values.

Sets are measured by what a set has done when it returns, to sit beside the
statevault set that does the same:
- `diskcache_set`: committed to its SQLite file (WAL, synchronous=NORMAL,
  diskcache's defaults), like a statevault set followed by a flush;
- `redis_set`: in the server's memory only (`--save '' --appendonly no`),
  like statevault's write-behind set;
- `redis_set_aof`: also written to the append-only file before the reply
  (`--appendonly yes --appendfsync everysec`: written, fsynced each second),
  the committed-per-call peer.

Run by hand (not in CI): `python3 benches/peers.py [--seconds S]`, with
`pip install diskcache redis` and Debian's `redis-server` installed. Prints
JSON: {"diskcache_get": {"us_per_op": X, "ops_per_sec": Y}, ...}. A peer that
is missing is reported as {"skipped": "why"}.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

VALUE = (b'{"query": "query 1", "items": [' + b'{"id": 1, "title": "Track"}, ' * 40)[:1024]
KEYS = [f"search:tracks:{i:064x}:bench" for i in range(500)]


def rate(seconds, op):
    """Ops/s of op(i) over KEYS in rounds until `seconds` pass (after a warm-up round)."""
    for i in range(len(KEYS)):
        op(i)
    ops = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for i in range(len(KEYS)):
            op(i)
        ops += len(KEYS)
    elapsed = time.perf_counter() - started
    return {"ops_per_sec": round(ops / elapsed), "us_per_op": round(elapsed / ops * 1e6, 2)}


def diskcache_figures(seconds, out):
    try:
        import diskcache
    except ImportError:
        out["diskcache_get"] = out["diskcache_set"] = {"skipped": "pip install diskcache"}
        return
    with tempfile.TemporaryDirectory() as d:
        cache = diskcache.Cache(d)
        out["diskcache_set"] = rate(seconds, lambda i: cache.set(KEYS[i], VALUE))
        out["diskcache_get"] = rate(seconds, lambda i: cache.get(KEYS[i]))
        cache.close()


BUCKET = """
local tokens_key, ts_key = KEYS[1], KEYS[2]
local rate, capacity, now, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(redis.call('GET', tokens_key)) or capacity
local last = tonumber(redis.call('GET', ts_key)) or now
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local allowed = tokens >= cost
if allowed then tokens = tokens - cost end
local ttl = math.ceil(capacity / rate / 1000) * 2
redis.call('SET', tokens_key, tokens, 'EX', ttl)
redis.call('SET', ts_key, now, 'EX', ttl)
return allowed and 1 or 0
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(redis, server, workdir, *persistence):
    """A redis-server on a free loopback port, and a client once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "", *persistence],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, client


def stop_redis(proc, client):
    client.close()
    proc.terminate()
    proc.wait()


def redis_figures(seconds, out):
    server = shutil.which("redis-server")
    try:
        import redis
    except ImportError:
        redis = None
    if server is None or redis is None:
        why = "apt-get install redis-server" if server is None else "pip install redis"
        for name in ("redis_get", "redis_set", "redis_set_aof", "redis_token_bucket"):
            out[name] = {"skipped": why}
        return
    with tempfile.TemporaryDirectory() as workdir:
        proc, client = start_redis(redis, server, workdir, "--appendonly", "yes", "--appendfsync", "everysec")
        try:
            out["redis_set_aof"] = rate(seconds, lambda i: client.set(KEYS[i], VALUE))
        finally:
            stop_redis(proc, client)
        proc, client = start_redis(redis, server, workdir, "--appendonly", "no")
        try:
            memory_only(client, seconds, out)
        finally:
            stop_redis(proc, client)


def memory_only(client, seconds, out):
    """The figures of the server that keeps everything in memory."""
    out["redis_version"] = client.info()["redis_version"]
    out["redis_set"] = rate(seconds, lambda i: client.set(KEYS[i], VALUE))
    out["redis_get"] = rate(seconds, lambda i: client.get(KEYS[i]))
    bucket = client.register_script(BUCKET)
    rate_per_ms = 1e9 / 3_600_000

    def check(i):
        now = int(time.time() * 1000)
        bucket(keys=[f"tb:{i}", f"ts:{i}"], args=[rate_per_ms, 1e9, now, 1])

    out["redis_token_bucket"] = rate(seconds, check)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure")
    args = parser.parse_args()
    out = {"python": sys.version.split()[0], "value_bytes": len(VALUE), "cpu_count": os.cpu_count()}
    diskcache_figures(args.seconds, out)
    redis_figures(args.seconds, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
