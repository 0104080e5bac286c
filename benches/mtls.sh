#!/usr/bin/env bash
# mTLS benchmark: two Remora sidecars, A (outbound) calling B (inbound, permissive) over mTLS
# versus plaintext, on the same ports and processes.
#
#   benches/mtls.sh            # installs wrk, nginx and openssl when missing (needs root)
#   DURATION=20 ROUNDS=5 benches/mtls.sh
#
# wrk → A's outbound → B's inbound → nginx (a small fixed body). Host `mtls` routes to a
# service with `tls: { identity }`, host `plain` to the same endpoint without TLS. Both
# sidecars are pinned to core 0; wrk, openssl and the upstream run on core 1.
#
# 1. Keep-alive: wrk's connections stay open, A pools its connections to B, so this measures
#    the cost of encrypting every request (target: mTLS at least 0.85x plaintext). Three
#    chains: plaintext HTTP/1.1, mTLS HTTP/1.1 (`protocol: http1`), and the default between
#    sidecars (`protocol: auto`: every HTTP/1.1 request multiplexed over one HTTP/2 mTLS
#    connection per peer). Each reports the connections B accepted during the run.
# 2. New connections: a new connection to B's inbound for every request, so every request pays
#    a handshake. Plaintext with wrk (`Connection: close`), mTLS with parallel
#    `openssl s_time -new` (full handshakes with a client certificate, one GET each).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need openssl; then
  echo "installing wrk, nginx, openssl" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light openssl >/dev/null
fi
cargo build --release --quiet

source benches/common.sh
read -r UP A_PORT B_PORT A_ADMIN B_ADMIN < <(free_ports 5)
start_upstream "$UP" "$LOAD_CPU"

A_ID=spiffe://bench.local/ns/bench/sa/a
B_ID=spiffe://bench.local/ns/bench/sa/b
target/release/remora certs --out "$work/certs" "$A_ID" "$B_ID" >/dev/null

cat > "$work/b.yaml" <<YAML
version: 1
admin: { listen: 127.0.0.1:$B_ADMIN }
log: { level: warn, format: json }
identity: { trust_anchors: certs/ca.crt, certificate: certs/b.crt, private_key: certs/b.key }
inbound:
  listen: 127.0.0.1:$B_PORT
  app: 127.0.0.1:$UP
  protocol: http1
  tls: permissive
YAML
cat > "$work/a.yaml" <<YAML
version: 1
admin: { listen: 127.0.0.1:$A_ADMIN }
log: { level: warn, format: json }
identity: { trust_anchors: certs/ca.crt, certificate: certs/a.crt, private_key: certs/a.key }
outbound:
  listen: 127.0.0.1:$A_PORT
  unmatched: reject
  routes:
    - { name: mtls, match: { host: mtls }, backends: [{ service: b-mtls }] }
    - { name: plain, match: { host: plain }, backends: [{ service: b-plain }] }
    - { name: mesh, match: { host: mesh }, backends: [{ service: b-mesh }] }
services:
  b-mtls: { endpoints: ["127.0.0.1:$B_PORT"], protocol: http1, idle_timeout: 1s, tls: { identity: "$B_ID" } }
  b-mesh: { endpoints: ["127.0.0.1:$B_PORT"], idle_timeout: 1s, tls: { identity: "$B_ID" } }
  b-plain: { endpoints: ["127.0.0.1:$B_PORT"], protocol: http1, idle_timeout: 1s }
YAML
for side in b a; do
  taskset -c "$PROXY_CPU" target/release/remora run --workers 1 --config "$work/$side.yaml" > "$work/$side.log" 2>&1 &
  pids+=($!)
  [ "$side" = b ] && b_pid=$!
done
# CPU seconds B has used so far (user + system).
b_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$b_pid/stat"; }
for p in $UP $A_PORT $B_PORT $A_ADMIN $B_ADMIN; do wait_port "$p"; done

# wrk: prints "rps p50_ms p99_ms"
h1() {
  local host=$1 port=$2; shift 2
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: $host" "$@" "http://127.0.0.1:$port/" |
    wrk_figures
}

# Connections B's inbound listener has accepted so far.
b_conns() {
  python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$B_ADMIN/metrics').read().decode())" |
    awk '/^remora_connections_total\{direction="inbound"\}/ { print $2 }'
}
# A keep-alive run through A to host $1, with the connections B accepted meanwhile appended:
# "rps p50_ms p99_ms conns". A's idle pooled connections to B are closed between runs
# (idle_timeout), so each run opens its own.
chain() {
  local before figures
  before=$(b_conns)
  figures=$(h1 "$1" "$A_PORT")
  echo "$figures $(( $(b_conns) - before ))"
}

# openssl s_time: a new mTLS connection (full handshake) and one GET per connection, from
# TLS_CLIENTS processes at once (one s_time is sequential, so alone it measures latency);
# prints connections per wall-clock second, summed, and B's CPU share meanwhile (the clients
# share one core with the upstream and saturate it first, so the rate per B CPU-second is
# the figure for B's capacity).
TLS_CLIENTS=${TLS_CLIENTS:-8}
handshakes() {
  local i cpu0 start
  cpu0=$(b_cpu); start=$(date +%s.%N)
  for i in $(seq "$TLS_CLIENTS"); do
    taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$B_PORT" -new -time "$DURATION" \
      -cert "$work/certs/a.crt" -key "$work/certs/a.key" -CAfile "$work/certs/ca.crt" -www / \
      > "$work/s_time.$i" 2>&1 &
  done
  wait_clients
  local share
  share=$(python3 -c "import time; print('%.3f' % (($(b_cpu) - $cpu0) / (time.time() - $start)))")
  cat "$work"/s_time.* | python3 -c '
import re, sys
t = sys.stdin.read()
runs = re.findall(r"(\d+) connections in (\d+) real seconds", t)
if not runs: sys.exit("cannot read openssl s_time output:\n" + t)
print("%.1f" % sum(int(n) / int(s) for n, s in runs), sys.argv[1])' "$share"
  rm -f "$work"/s_time.*
}
wait_clients() {
  # Only the s_time jobs: the servers in $pids run until the end.
  local j
  for j in $(jobs -p); do
    case " ${pids[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac
  done
}

printf '\nRemora %s; %ss per run, %s rounds; sidecars on CPU %s, load and upstream on CPU %s\n' \
  "$(target/release/remora --version | awk '{print $2}')" "$DURATION" "$ROUNDS" "$PROXY_CPU" "$LOAD_CPU"

declare -A R
h1 mtls "$A_PORT" >/dev/null 2>&1 || true   # warm-up: pools and session caches
for round in $(seq "$ROUNDS"); do
  echo "round $round of $ROUNDS" >&2
  R[keepalive_plain]+="$(chain plain);"; sleep 2
  R[keepalive_mtls]+="$(chain mtls);"; sleep 2
  R[keepalive_mesh]+="$(chain mesh);"; sleep 2
  R[newconn_plain]+="$(h1 b "$B_PORT" -H 'Connection: close');"
  R[newconn_mtls]+="$(handshakes) 0;"
done

median() { # field (1 rps, 2 p50, 3 p99) of the median run by rps
  python3 - "$1" "$2" <<'PY'
import sys
runs = [r.split() for r in sys.argv[1].split(";") if r.strip()]
runs.sort(key=lambda r: float(r[0]))
print(runs[len(runs) // 2][int(sys.argv[2]) - 1])
PY
}

printf '\n%-34s %12s %10s %10s %14s\n' "test" "req/s" "p50 ms" "p99 ms" "B conns/run"
for k in keepalive_plain keepalive_mtls keepalive_mesh newconn_plain; do
  conns=""; [ "$k" != newconn_plain ] && conns=$(median "${R[$k]}" 4)
  printf '%-34s %12s %10s %10s %14s\n' "$k" "$(median "${R[$k]}" 1)" "$(median "${R[$k]}" 2)" "$(median "${R[$k]}" 3)" "$conns"
done
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
echo
echo "keep-alive mTLS / plaintext: $(ratio "$(median "${R[keepalive_mtls]}" 1)" "$(median "${R[keepalive_plain]}" 1)")x (target 0.85x)"
echo "keep-alive mesh (HTTP/2 between sidecars) / plaintext: $(ratio "$(median "${R[keepalive_mesh]}" 1)" "$(median "${R[keepalive_plain]}" 1)")x"
hs=$(median "${R[newconn_mtls]}" 1); share=$(median "${R[newconn_mtls]}" 2)
echo "new connections: plaintext $(median "${R[newconn_plain]}" 1) connections/s (wrk, Connection: close)"
echo "new connections: mTLS $hs handshakes/s with one GET each; B used $share of a CPU, so $(ratio "$hs" "$share") handshakes per B CPU-second"
echo "B's handshake counters:"
python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$B_ADMIN/metrics').read().decode())" |
  grep '^remora_tls_handshakes_total' || true
