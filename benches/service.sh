#!/usr/bin/env bash
# The whole request path under load: examples/service over an encrypted
# file, over a plain file, and the same service wired to Redis
# (benches/redis-service), each driven by wrk with GET /search as logged-in
# users, at each connection count. Prints a Markdown table (req/s, p50, p99,
# errors, the service's peak RSS) and writes the figures as JSON.
#
#   bash benches/service.sh                       # 20 s at 1, 16 and 64 connections
#   DURATION=5 CONNECTIONS="8 64" bash benches/service.sh
#
# Settings (environment): DURATION (seconds per run, 20), CONNECTIONS ("1 16
# 64"), USERS (logged-in users the requests cycle through, 200), QUERIES
# (distinct search terms, 100), PROFILE (release), OUT (the JSON file,
# target/service-bench.json), SERVICE_BIN and REDIS_SERVICE_BIN (prebuilt
# binaries; built with cargo otherwise). Needs wrk, redis-server, python3.
# The peak RSS of the Redis-wired service is its own plus redis-server's.
#
# Every limit the requests meet is checked but set high enough never to
# refuse, on both sides; the cache hits after each term's first request.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-1 16 64}"
USERS="${USERS:-200}"
QUERIES="${QUERIES:-100}"
PROFILE="${PROFILE:-release}"
OUT="${OUT:-target/service-bench.json}"

for tool in wrk redis-server python3; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install wrk redis-server python3)" >&2; exit 1; }
done

flag=(); [ "$PROFILE" = release ] && flag=(--release)
if [ -z "${SERVICE_BIN:-}" ]; then
    cargo build -q "${flag[@]}" --example service --features tower
    SERVICE_BIN="target/$PROFILE/examples/service"
fi
if [ -z "${REDIS_SERVICE_BIN:-}" ]; then
    cargo build -q "${flag[@]}" --manifest-path benches/redis-service/Cargo.toml --target-dir target/redis-service
    REDIS_SERVICE_BIN="target/redis-service/$PROFILE/redis-service"
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The limits the service checks, each window far above what wrk can spend.
limits='
[rate_limiting.limits.api_calls]
per_minute = 1000000000
per_hour = 1000000000
[rate_limiting.limits.search_queries]
per_minute = 1000000000
per_hour = 1000000000
[rate_limiting.limits.auth_attempts]
per_minute = 1000000000
strict = true
'
printf '%s' "$limits" >"$work/encrypted.toml"
printf '[storage_paths]\nencryption = false\n%s' "$limits" >"$work/plain.toml"

redis_port="$(free_port)"
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --daemonize no \
    --dir "$work" >"$work/redis.log" 2>&1 &
redis_pid="$!"
pids+=("$redis_pid")

# Waits until something answers HTTP on port $1.
wait_http() {
    python3 - "$1" <<'EOF'
import sys, time, urllib.request, urllib.error
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/login", timeout=1)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(f"error: nothing answers on port {sys.argv[1]}")
EOF
}

# Logs USERS users in on port $1 and writes the wrk script to $2: bearer
# tokens (statevault) or session cookies (tower-sessions).
login_script() {
    python3 - "$1" "$2" "$USERS" "$QUERIES" <<'EOF'
import json, sys, urllib.request
port, script, users, queries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
headers = []
for i in range(users):
    body = json.dumps({"user": f"bench-{i}", "password": "pw"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/login", body, {"content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        cookie = resp.headers.get("set-cookie")
        answer = json.load(resp)
    if "token" in answer:
        headers.append(("Authorization", "Bearer " + answer["token"]))
    else:
        headers.append(("Cookie", cookie.split(";")[0]))
with open(script, "w") as f:
    f.write("local h = {\n")
    for name, value in headers:
        f.write(f'  {{ {json.dumps(name)}, {json.dumps(value)} }},\n')
    f.write("}\n")
    f.write(f"local n, queries, i = #h, {queries}, math.random(0, 1000000)\n")
    f.write("""
request = function()
  i = i + 1
  local who = h[(i % n) + 1]
  return wrk.format("GET", "/search?q=term" .. (i % queries), { [who[1]] = who[2] })
end
""")
EOF
}

# Runs wrk against port $1 with script $2 and $3 connections; prints one
# JSON object of the figures.
run_wrk() {
    local threads=$(( $3 < 2 ? $3 : 2 ))
    wrk -t "$threads" -c "$3" -d "${DURATION}s" --latency -s "$2" "http://127.0.0.1:$1" >"$work/wrk.txt"
    python3 - "$work/wrk.txt" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
total = int(re.search(r"(\d+) requests in", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
socket = re.search(r"Socket errors: (.*)", text)
print(json.dumps({
    "requests": total,
    "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
    "p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]),
    "non_2xx": int(errors.group(1)) if errors else 0,
    "socket_errors": socket.group(1) if socket else None,
}))
EOF
}

results="$work/results.jsonl"
for variant in encrypted plain redis; do
    port="$(free_port)"
    if [ "$variant" = redis ]; then
        "$REDIS_SERVICE_BIN" --listen "127.0.0.1:$port" --redis "redis://127.0.0.1:$redis_port" \
            --audit "$work/audit.jsonl" >"$work/$variant.log" 2>&1 &
    else
        RUST_LOG=warn "$SERVICE_BIN" --listen "127.0.0.1:$port" --db "$work/$variant.db" \
            --config "$work/$variant.toml" >"$work/$variant.log" 2>&1 &
    fi
    pid="$!"
    pids+=("$pid")
    wait_http "$port" || { cat "$work/$variant.log" >&2; exit 1; }
    login_script "$port" "$work/$variant.lua"
    # The Redis-wired service's memory includes redis-server's.
    measured=("$pid"); [ "$variant" = redis ] && measured+=("$redis_pid")
    for conns in $CONNECTIONS; do
        for p in "${measured[@]}"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
        figures="$(run_wrk "$port" "$work/$variant.lua" "$conns")"
        rss_kib=0
        for p in "${measured[@]}"; do
            rss_kib=$(( rss_kib + $(awk '/VmHWM/ {print $2}' "/proc/$p/status") ))
        done
        echo "{\"service\": \"$variant\", \"connections\": $conns, \"peak_rss_kib\": $rss_kib, \"figures\": $figures}" >>"$results"
        echo "  $variant, $conns connections: $figures" >&2
    done
    kill -INT "$pid"
    wait "$pid" || { echo "error: the $variant service did not stop cleanly" >&2; cat "$work/$variant.log" >&2; exit 1; }
done

mkdir -p "$(dirname "$OUT")"
python3 - "$results" "$OUT" "$DURATION" <<'EOF'
import json, os, platform, sys, time
rows = [json.loads(l) for l in open(sys.argv[1])]
report = {
    "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    "duration_s": int(sys.argv[3]), "runs": rows,
}
json.dump(report, open(sys.argv[2], "w"), indent=2)
print(f"{report['date']}, {report['machine']}, {report['duration_s']} s per run\n")
print("| service | connections | req/s | p50 ms | p99 ms | non-2xx | peak RSS MiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for r in rows:
    f = r["figures"]
    print(f"| {r['service']} | {r['connections']} | {f['req_per_s']:.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['non_2xx']} | {r['peak_rss_kib'] / 1024:.0f} |")
by = {(r["service"], r["connections"]): r["figures"] for r in rows}
print()
for c in sorted({r["connections"] for r in rows}):
    e, p, r = by.get(("encrypted", c)), by.get(("plain", c)), by.get(("redis", c))
    if e and r and p:
        print(f"- {c} connections: encrypted/redis req/s {e['req_per_s'] / r['req_per_s']:.2f}x, "
              f"p99 {e['p99_ms'] / r['p99_ms']:.2f}x of redis's; encrypted/plain req/s {e['req_per_s'] / p['req_per_s']:.2f}x")
print(f"\n(JSON: {sys.argv[2]})")
EOF
