#!/usr/bin/env bash
# Idle mTLS keep-alive connections to Remora's inbound listener: what each one costs in
# resident memory. Makes a CA and two identities with `remora certs`, serves an nginx
# upstream behind an inbound listener with `tls: strict`, then opens HOLD (1,000) HTTP/1.1
# connections with a client certificate, one request each, and holds them idle
# (benches/hold.py's figures: RSS before, RSS held, bytes per connection).
#
#   benches/hold_tls.sh             (REMORA_BIN defaults to target/release/remora)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh

HOLD=${HOLD:-1000}
bin=${REMORA_BIN:-target/release/remora}
[ -x "$bin" ] || cargo build --release --quiet
read -r UP PORT < <(free_ports 2)
start_upstream "$UP" 1
"$bin" certs --out "$work/certs" spiffe://bench.local/ns/a/sa/server spiffe://bench.local/ns/a/sa/client > /dev/null
cat > "$work/inbound.yaml" <<YAML
version: 1
identity: { trust_anchors: $work/certs/ca.crt, certificate: $work/certs/server.crt, private_key: $work/certs/server.key }
inbound:
  listen: 127.0.0.1:$PORT
  app: 127.0.0.1:$UP
  tls: strict
YAML
TOKIO_WORKER_THREADS=1 "$bin" run --config "$work/inbound.yaml" > "$work/remora.log" 2>&1 &
pid=$!
pids+=($pid)
wait_port "$UP"
wait_port "$PORT"
python3 - "$PORT" "$HOLD" "$work/certs" "$pid" <<'PY'
import socket, ssl, sys, time
sys.path.insert(0, "benches")
from hold import read_response, rss_kb
port, count, certs, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False  # a SPIFFE ID is a URI SAN, not a host name
ctx.load_verify_locations(f"{certs}/ca.crt")
ctx.load_cert_chain(f"{certs}/client.crt", f"{certs}/client.key")
ctx.set_alpn_protocols(["http/1.1"])
before = rss_kb([pid])
socks = []
for _ in range(count):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    s.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
    read_response(s)
    socks.append(s)
time.sleep(3)
held = rss_kb([pid])
print(f"{count} idle mTLS HTTP/1.1 connections: RSS {before / 1024:.1f} -> {held / 1024:.1f} MiB, "
      f"{round((held - before) * 1024 / count)} bytes each")
PY
