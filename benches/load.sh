#!/usr/bin/env bash
# Load benchmark: Remora vs nginx vs HAProxy doing the same job, one core each.
#
#   benches/load.sh            # installs wrk, h2load, nginx, haproxy when missing (needs root)
#   DURATION=20 benches/load.sh
#   BASELINE_BIN=/tmp/old/remora benches/load.sh   # also runs an older build, in turns, A/B
#
# Each proxy runs pinned to core 0 in front of the same upstream (nginx answering a small
# fixed body on core 1); the load generator runs on core 1. HTTP/1.1 keep-alive load comes
# from wrk, HTTP/2 (prior knowledge, upstream HTTP/1.1 for every proxy) from h2load. Prints
# requests/s, p50, p99 and CPU µs per request per proxy, Remora's ratios, and Remora's resident memory idle and
# after load; then, for each proxy, the memory each of HOLD idle keep-alive connections costs
# (HTTP/1.1, then h2c). Everything listens on 127.0.0.1 on ports picked free at start.
# It also runs the cache hit path (Remora's `cache:` route and nginx's proxy_cache on /cached).
# Last, what tracing costs in instructions per request (callgrind: no tracing, 1%, 100%), the
# figure tracing's budgets are judged by; CALLGRIND=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}        # seconds per run
ROUNDS=${ROUNDS:-3}             # runs of each, interleaved; medians are reported
CONNS=${CONNS:-50}              # wrk connections
H2_CONNS=${H2_CONNS:-10}        # h2load connections
H2_STREAMS=${H2_STREAMS:-10}    # concurrent streams per h2 connection
HOLD=${HOLD:-1000}              # idle keep-alive connections held for the memory figures
OPEN_RATES=${OPEN_RATES:-"1000 5000"}  # fixed request rates of the open-loop runs (oha)
OPEN_SECS=${OPEN_SECS:-10}      # seconds per open-loop run
OPEN_CONNS=${OPEN_CONNS:-32}    # oha connections
CALLGRIND=${CALLGRIND:-1}       # 0 skips the instruction counts of tracing's cost
CG_REQUESTS=${CG_REQUESTS:-20000}  # requests per callgrind run
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need h2load || ! need nginx || ! need haproxy || ! need valgrind; then
  echo "installing wrk, h2load, nginx, haproxy, valgrind" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client nginx-light haproxy valgrind >/dev/null
fi
if ! need oha; then
  echo "installing oha (cargo install oha, a few minutes)" >&2
  cargo install oha --locked --quiet
fi
cargo build --release --quiet
# Room for the held connections (raised only: HAProxy sizes itself to the limit it finds).
if (( $(ulimit -n) < HOLD * 4 + 4096 )); then ulimit -n $(( HOLD * 4 + 4096 )) 2>/dev/null || true; fi

source benches/common.sh
read -r UP REMORA_PORT NGINX_H1 NGINX_H2 HAPROXY_PORT ADMIN BASE_PORT BASE_ADMIN \
  T1_PORT T1_ADMIN T100_PORT T100_ADMIN < <(free_ports 12)
BASELINE_BIN=${BASELINE_BIN:-}

# --- the upstream: nginx on the load core, a small fixed body ---
start_upstream "$UP" "$LOAD_CPU"

# --- Remora ---
cat > "$work/remora.yaml" <<YAML
version: 1
admin: { listen: 127.0.0.1:$ADMIN }
log: { level: warn, format: json }
outbound:
  listen: 127.0.0.1:$REMORA_PORT
  unmatched: reject
  routes:
    - name: bench
      match: { host: bench }
      backends: [{ service: upstream }]
    # The cache hit path: the upstream's /cached answers are fresh for an hour.
    - name: cached
      match: { host: cached }
      backends: [{ service: upstream }]
      cache: {}
    # The same upstream behind every resilience policy, none of which fires.
    - name: policies
      match: { host: policies }
      backends: [{ service: guarded }]
      retry: { attempts: 3, per_try_timeout: 1s, on: [gateway-error, connect-failure, reset] }
services:
  upstream: { endpoints: ["127.0.0.1:$UP"], protocol: http1 }
  guarded:
    endpoints: ["127.0.0.1:$UP"]
    protocol: http1
    retry_budget: { ratio: 0.2, min_per_second: 10 }
    circuit_breaker: { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024 }
    outlier_detection: { consecutive_failures: 5, base_ejection: 30s, max_ejected_percent: 50 }
YAML
TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" target/release/remora run --config "$work/remora.yaml" > "$work/remora.log" 2>&1 &
remora_pid=$!
pids+=($remora_pid)

# --- the same build with tracing at 1% and at 100% (spans go to the upstream nginx, which
# answers every POST /v1/traces with 200), for what tracing costs ---
for t in 1:$T1_PORT:$T1_ADMIN 100:$T100_PORT:$T100_ADMIN; do
  IFS=: read -r pct port admin <<< "$t"
  sed -e "s/127.0.0.1:$REMORA_PORT/127.0.0.1:$port/" -e "s/127.0.0.1:$ADMIN/127.0.0.1:$admin/" \
    "$work/remora.yaml" > "$work/trace$pct.yaml"
  echo "tracing: { otlp_endpoint: \"http://127.0.0.1:$UP\", sample_percent: $pct }" >> "$work/trace$pct.yaml"
  TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" target/release/remora run --config "$work/trace$pct.yaml" > "$work/trace$pct.log" 2>&1 &
  pids+=($!)
  eval "trace${pct}_pid=$!"
done

# --- the baseline build, when given: the same config on its own ports ---
if [ -n "$BASELINE_BIN" ]; then
  sed -e "s/127.0.0.1:$REMORA_PORT/127.0.0.1:$BASE_PORT/" -e "s/127.0.0.1:$ADMIN/127.0.0.1:$BASE_ADMIN/" \
    "$work/remora.yaml" > "$work/baseline.yaml"
  TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" "$BASELINE_BIN" run --config "$work/baseline.yaml" > "$work/baseline.log" 2>&1 &
  base_pid=$!
  pids+=($base_pid)
fi

# --- nginx as the proxy (HTTP/1.1 and h2c need separate listeners in nginx) ---
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  proxy_cache_path $work/nginx-cache keys_zone=hits:10m max_size=64m;
  server {
    listen 127.0.0.1:$NGINX_H1;
    listen 127.0.0.1:$NGINX_H2 http2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location /cached { proxy_cache hits; proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
# The cache directory is the workers' (nginx runs them as nobody when started as root), and
# they must be able to reach it: mktemp's folder is the owner's alone.
chmod 711 "$work"
mkdir -p "$work/nginx-cache" && chmod 777 "$work/nginx-cache"
taskset -c "$PROXY_CPU" nginx -c "$work/nginx.conf" -p "$work" &
nginx_pid=$!
pids+=($nginx_pid)

# --- HAProxy (detects h2c prior knowledge on an HTTP frontend) ---
cat > "$work/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  server up 127.0.0.1:$UP maxconn 1000
HAP
taskset -c "$PROXY_CPU" haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
haproxy_pid=$!
pids+=($haproxy_pid)

for p in $UP $REMORA_PORT $NGINX_H1 $NGINX_H2 $HAPROXY_PORT $ADMIN $T1_PORT $T100_PORT; do wait_port "$p"; done
if [ -n "$BASELINE_BIN" ]; then wait_port "$BASE_PORT"; fi
rss_kb() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
idle_rss=$(rss_kb "$remora_pid")

# The processes serving each port, for CPU per request (nginx: its worker).
declare -A PIDS_OF
PIDS_OF[$REMORA_PORT]=$remora_pid
PIDS_OF[$HAPROXY_PORT]=$haproxy_pid
PIDS_OF[$T1_PORT]=$trace1_pid
PIDS_OF[$T100_PORT]=$trace100_pid
# Its workers only: the cache loader comes and goes.
PIDS_OF[$NGINX_H1]=$(pgrep -P "$nginx_pid" -f "worker process" | tr '\n' ' ')
PIDS_OF[$NGINX_H2]=${PIDS_OF[$NGINX_H1]}
if [ -n "$BASELINE_BIN" ]; then PIDS_OF[$BASE_PORT]=$base_pid; fi
CLK_TCK=$(getconf CLK_TCK)
# CPU time (user + system, in clock ticks) the processes serving port $1 used so far.
cpu_ticks() {
  local t=0 p
  for p in ${PIDS_OF[$1]:-}; do
    t=$(( t + $(awk '{ print $14 + $15 }' "/proc/$p/stat") ))
  done
  echo "$t"
}
# Appends µs of the port's CPU per request to "rps p50 p99", given the ticks before (and the
# run's seconds, when not DURATION).
with_cpu() {
  local port=$1 before=$2 secs=${3:-$DURATION} figures after
  read -r figures
  after=$(cpu_ticks "$port")
  awk -v f="$figures" -v t=$(( after - before )) -v hz="$CLK_TCK" -v d="$secs" \
    'BEGIN { split(f, a, " "); cpu = (a[1] > 0) ? t / hz * 1e6 / (a[1] * d) : 0; print f, cpu }'
}

# wrk: prints "rps p50_ms p99_ms cpu_us" (host header "bench" unless a second argument says
# otherwise; cpu_us is 0 for a port with no process of ours behind it)
h1() {
  local before
  before=$(cpu_ticks "$1")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: ${2:-bench}" "http://127.0.0.1:$1${3:-/}" |
    wrk_figures | with_cpu "$1" "$before"
}

# h2load: prints "rps p50_ms p99_ms cpu_us" from its per-request log
h2() {
  local log="$work/h2load-$1.log" before
  before=$(cpu_ticks "$1")
  rm -f "$log"
  taskset -c "$LOAD_CPU" h2load -D "$DURATION" -c "$H2_CONNS" -m "$H2_STREAMS" -t1 \
    -H ":authority: bench" --log-file="$log" "http://127.0.0.1:$1/" > "$work/h2load-$1.out"
  { python3 - "$log" "$work/h2load-$1.out" <<'PY'
import re, sys
lat = sorted(int(l.split("\t")[2]) for l in open(sys.argv[1]) if l.strip())
out = open(sys.argv[2]).read()
rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1)
ok = re.search(r"status codes: (\d+) 2xx", out)
bad = re.search(r"(\d+) failed", out)
if bad and int(bad.group(1)): print("warning: %s failed requests" % bad.group(1), file=sys.stderr)
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
print(rps, pct(0.50), pct(0.99))
PY
  } | with_cpu "$1" "$before"
}

# oha, open loop at a fixed rate of $2 req/s with latency correction (a late request counts
# from when it should have been sent): prints "rps p50_ms p99_ms cpu_us".
open_loop() {
  local before
  before=$(cpu_ticks "$1")
  taskset -c "$LOAD_CPU" oha -z "${OPEN_SECS}s" -q "$2" -c "$OPEN_CONNS" --latency-correction \
    --no-tui $OHA_JSON -H "Host: bench" "http://127.0.0.1:$1/" > "$work/oha-$1.json"
  python3 - "$work/oha-$1.json" <<'PY' | with_cpu "$1" "$before" "$OPEN_SECS"
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution", {})
# Requests still in flight when the run's time is up are cut off by oha, not failed.
errors = {e: n for e, n in r.get("errorDistribution", {}).items() if "deadline" not in e}
bad = sum(n for c, n in codes.items() if not c.startswith("2")) + sum(errors.values())
if errors: print("oha errors: %s" % errors, file=sys.stderr)
if bad: print("warning: %d failed requests" % bad, file=sys.stderr)
p = r["latencyPercentiles"]
print(r["summary"]["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000)
PY
}
# oha's JSON flag changed name between releases.
if oha --help | grep -q -- --output-format; then OHA_JSON="--output-format json"; else OHA_JSON="-j"; fi

printf '\nRemora %s; %ss per run; proxies pinned to CPU %s, load and upstream on CPU %s\n' \
  "$(target/release/remora --version | awk '{print $2}')" "$DURATION" "$PROXY_CPU" "$LOAD_CPU"

declare -A R
# Warm-up: open pools and connections.
h1 "$REMORA_PORT" >/dev/null 2>&1 || true
if [ -n "$BASELINE_BIN" ]; then h1 "$BASE_PORT" >/dev/null 2>&1 || true; fi

# The machine's speed drifts (other tenants): interleave the contenders in every round so
# each ratio compares runs made minutes apart at most, and report medians.
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  R[direct_h1]+="$(h1 "$UP");"
  R[remora_h1]+="$(h1 "$REMORA_PORT");"
  R[haproxy_h1]+="$(h1 "$HAPROXY_PORT");"
  R[nginx_h1]+="$(h1 "$NGINX_H1");"
  R[remora_h1_policies]+="$(h1 "$REMORA_PORT" policies);"
  R[remora_h1_cache_hit]+="$(h1 "$REMORA_PORT" cached /cached);"
  R[nginx_h1_cache_hit]+="$(h1 "$NGINX_H1" cached /cached);"
  R[remora_h1_trace1]+="$(h1 "$T1_PORT");"
  R[remora_h1_trace100]+="$(h1 "$T100_PORT");"
  R[remora_h2]+="$(h2 "$REMORA_PORT");"
  R[haproxy_h2]+="$(h2 "$HAPROXY_PORT");"
  R[nginx_h2]+="$(h2 "$NGINX_H2");"
  for rate in $OPEN_RATES; do
    for who in direct:$UP remora:$REMORA_PORT nginx:$NGINX_H1 haproxy:$HAPROXY_PORT; do
      R[${who%%:*}_open$rate]+="$(open_loop "${who#*:}" "$rate");"
    done
  done
  if [ -n "$BASELINE_BIN" ]; then
    R[baseline_h1]+="$(h1 "$BASE_PORT");"
    R[baseline_h2]+="$(h2 "$BASE_PORT");"
    for rate in $OPEN_RATES; do R[baseline_open$rate]+="$(open_loop "$BASE_PORT" "$rate");"; done
  fi
done
loaded_rss=$(rss_kb "$remora_pid")
# Peak RSS over the load runs (VmHWM), before the held connections below.
hwm_kb() { local t=0 p; for p in "$@"; do t=$(( t + $(awk '/VmHWM/ { print $2 }' "/proc/$p/status") )); done; echo "$t"; }
peaks="remora=$(hwm_kb "$remora_pid") nginx=$(hwm_kb $(pgrep -P "$nginx_pid" -f "worker process")) haproxy=$(hwm_kb "$haproxy_pid")"

# Memory per idle keep-alive connection: HOLD connections, one request each, then idle.
# nginx's figure is its worker's (the master only forks it).
hold_remora=$(python3 benches/hold.py "$REMORA_PORT" bench "$HOLD" "$remora_pid")
hold_nginx=$(python3 benches/hold.py "$NGINX_H1" bench "$HOLD" $(pgrep -P "$nginx_pid" -f "worker process"))
hold_haproxy=$(python3 benches/hold.py "$HAPROXY_PORT" bench "$HOLD" "$haproxy_pid")
hold_h2_remora=$(python3 benches/hold_h2.py "$REMORA_PORT" bench "$HOLD" "$remora_pid")
hold_h2_nginx=$(python3 benches/hold_h2.py "$NGINX_H2" bench "$HOLD" $(pgrep -P "$nginx_pid" -f "worker process"))
hold_h2_haproxy=$(python3 benches/hold_h2.py "$HAPROXY_PORT" bench "$HOLD" "$haproxy_pid")

open_args=()
for k in "${!R[@]}"; do case $k in *_open*) open_args+=("$k=${R[$k]}") ;; esac; done
python3 - "$idle_rss" "$loaded_rss" \
  "direct_h1=${R[direct_h1]}" "remora_h1=${R[remora_h1]}" "remora_h1_policies=${R[remora_h1_policies]}" \
  "remora_h1_cache_hit=${R[remora_h1_cache_hit]}" "nginx_h1_cache_hit=${R[nginx_h1_cache_hit]}" \
  "remora_h1_trace1=${R[remora_h1_trace1]}" "remora_h1_trace100=${R[remora_h1_trace100]}" \
  "nginx_h1=${R[nginx_h1]}" "haproxy_h1=${R[haproxy_h1]}" \
  "remora_h2=${R[remora_h2]}" "nginx_h2=${R[nginx_h2]}" "haproxy_h2=${R[haproxy_h2]}" \
  ${BASELINE_BIN:+"baseline_h1=${R[baseline_h1]}" "baseline_h2=${R[baseline_h2]}"} \
  "${open_args[@]}" <<'PY'
import sys
idle, loaded = int(sys.argv[1]), int(sys.argv[2])
import statistics
r = {}
for a in sys.argv[3:]:
    k, v = a.split("=")
    runs = [tuple(map(float, x.split())) for x in v.split(";") if x.strip()]
    r[k] = tuple(statistics.median(run[i] for run in runs) for i in range(4))
print("\nper round (req/s):")
for a in sys.argv[3:]:
    k, v = a.split("=")
    print(f"  {k:<20}" + " ".join(f"{float(x.split()[0]):>9.0f}" for x in v.split(";") if x.strip()))
print(f"\nmedians of {len(sys.argv[3].split(';')) - 1} interleaved runs each")
print(f"{'run':<20}{'req/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'CPU µs/req':>12}")
for k, (rps, p50, p99, cpu) in r.items():
    print(f"{k:<20}{rps:>12.0f}{p50:>10.3f}{p99:>10.3f}{cpu:>12.1f}")
print()
for proto in ("h1", "h2"):
    for other in ("nginx", "haproxy"):
        ratio = r[f"remora_{proto}"][0] / r[f"{other}_{proto}"][0]
        print(f"remora/{other} {proto} req/s: {ratio:.2f}x")
for proto in ("h1", "h2"):
    if f"baseline_{proto}" in r:
        ratio = r[f"remora_{proto}"][0] / r[f"baseline_{proto}"][0]
        print(f"remora/baseline build {proto} req/s: {ratio:.2f}x")
for proto in ("h1", "h2"):
    best = min(r[f"nginx_{proto}"][3], r[f"haproxy_{proto}"][3])
    if best > 0:
        print(f"remora CPU per {proto} request / the better of nginx and HAProxy: {r[f'remora_{proto}'][3] / best:.2f}x")
for rate in sorted({int(k.split("_open")[1]) for k in r if "_open" in k}):
    direct = r[f"direct_open{rate}"][2]
    added = {who: r[f"{who}_open{rate}"][2] - direct for who in ("remora", "nginx", "haproxy", "baseline")
             if f"{who}_open{rate}" in r}
    best = min(added["nginx"], added["haproxy"])
    print(f"open loop at {rate} req/s, added p99 over the upstream direct: " +
          ", ".join(f"{w} {a:+.3f} ms" for w, a in added.items()) +
          (f"; remora / the better: {added['remora'] / best:.2f}x" if best > 0 else ""))
    cpu = {who: r[f"{who}_open{rate}"][3] for who in ("remora", "nginx", "haproxy")}
    print(f"open loop at {rate} req/s, CPU µs per request: " +
          ", ".join(f"{w} {c:.1f}" for w, c in cpu.items()) +
          f"; remora / the better: {cpu['remora'] / min(cpu['nginx'], cpu['haproxy']):.2f}x")
for pct in (1, 100):
    t = r[f"remora_h1_trace{pct}"]
    print(f"remora with tracing at {pct}% / without, h1: req/s {t[0] / r['remora_h1'][0]:.2f}x, "
          f"CPU per request {t[3] / r['remora_h1'][3]:.2f}x")
ratio = r["remora_h1_policies"][0] / r["remora_h1"][0]
print(f"remora route with retry, budget, breaker and outlier detection / plain route h1 req/s: {ratio:.2f}x")
hit, nginx_hit = r["remora_h1_cache_hit"], r["nginx_h1_cache_hit"]
print(f"cache hits, h1: remora / nginx proxy_cache req/s {hit[0] / nginx_hit[0]:.2f}x, "
      f"CPU per request {hit[3] / nginx_hit[3]:.2f}x; remora hit / remora proxied CPU per request "
      f"{hit[3] / r['remora_h1'][3]:.2f}x")
print(f"\nremora RSS idle: {idle / 1024:.1f} MiB, after load: {loaded / 1024:.1f} MiB")
PY
echo "peak RSS over the load runs: $(for kv in $peaks; do awk -v k="${kv%%=*}" -v v="${kv#*=}" 'BEGIN { printf "%s %.1f MiB  ", k, v / 1024 }'; done)"
python3 - "$T100_ADMIN" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
pick = lambda name: sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))
print(f"tracing at 100%: {pick('remora_spans_exported_total'):.0f} spans exported, "
      f"{pick('remora_spans_dropped_total'):.0f} dropped")
PY
printf '\n%d idle keep-alive connections (one request each, then held):\n' "$HOLD"
printf '%-14s%16s%16s%20s\n' proxy "RSS before" "RSS held" "bytes/connection"
for v in hold_remora hold_nginx hold_haproxy hold_h2_remora hold_h2_nginx hold_h2_haproxy; do
  read -r before held per <<< "${!v}"
  p=${v#hold_}
  [ "${p#h2_}" = "$p" ] && p="$p h1" || p="${p#h2_} h2c"
  awk -v p="$p" -v b="$before" -v h="$held" -v n="$per" \
    'BEGIN { printf "%-14s%12.1f MiB%12.1f MiB%20d\n", p, b / 1024, h / 1024, n }'
done

# --- What tracing costs, in instructions. Callgrind counts the instructions a process runs
# the same from run to run (within about 1%), where the wall-clock ratios above swing by
# ±15% on a shared machine; so tracing's 3% and 15% budgets are judged here. One worker, the
# same route and upstream, CG_REQUESTS HTTP/1.1 requests from 10 connections per run. ---
if [ "$CALLGRIND" = 1 ]; then
  cg_per_request() {  # PCT (or "off"); prints instructions per request
    local pct=$1 port admin out
    read -r port admin < <(free_ports 2)
    out="$work/callgrind.$pct.out"
    cat > "$work/cg-$pct.yaml" <<YAML
version: 1
admin: { listen: 127.0.0.1:$admin }
log: { level: warn, format: json }
outbound:
  listen: 127.0.0.1:$port
  unmatched: reject
  routes:
    - { name: bench, match: { host: bench }, backends: [{ service: upstream }] }
services:
  upstream: { endpoints: ["127.0.0.1:$UP"], protocol: http1 }
YAML
    if [ "$pct" != off ]; then
      echo "tracing: { otlp_endpoint: \"http://127.0.0.1:$UP\", sample_percent: $pct }" >> "$work/cg-$pct.yaml"
    fi
    TOKIO_WORKER_THREADS=1 taskset -c "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$out" \
      target/release/remora run --workers 1 --config "$work/cg-$pct.yaml" >/dev/null 2>"$work/cg-$pct.err" &
    local vg=$!
    for _ in $(seq 600); do
      python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
      sleep 0.1
    done
    taskset -c "$LOAD_CPU" h2load --h1 -n "$CG_REQUESTS" -c 10 -m 1 -H ":authority: bench" "http://127.0.0.1:$port/" >/dev/null
    kill -INT "$vg"; wait "$vg" || true
    awk -v n="$CG_REQUESTS" '/^(summary|totals):/ { print int($2 / n); exit }' "$out"
  }
  echo
  echo "instructions per HTTP/1.1 request (callgrind, $CG_REQUESTS requests, one worker):"
  off=$(cg_per_request off)
  t1=$(cg_per_request 1)
  t100=$(cg_per_request 100)
  awk -v o="$off" -v a="$t1" -v b="$t100" 'BEGIN {
    printf "  no tracing %d; tracing at 1%% %d (%+.1f%%); at 100%% %d (%+.1f%%)\n", o, a, (a / o - 1) * 100, b, (b / o - 1) * 100 }'
fi
