#!/usr/bin/env bash
# Silent-connection flood: COUNT connections that never send a byte, against Remora's inbound
# listener (in front of nginx). Prints Remora's RSS before, during and after the flood, and
# how long a real request took while the flood held on.
#
#   benches/flood.sh               # 20,000 silent connections (installs nginx when missing)
#   COUNT=50000 benches/flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-20000}
need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
[ -n "${REMORA_BIN:-}" ] || cargo build --release --quiet
ulimit -n $(( COUNT * 2 + 1024 )) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < COUNT * 2 + 100 )); then COUNT=$(( ($(ulimit -n) - 200) / 2 )); echo "open-file limit: $COUNT connections" >&2; fi

source benches/common.sh
read -r UP IN ADMIN < <(free_ports 3)
UPSTREAM_CONNECTIONS=$(( COUNT + 1024 )) start_upstream "$UP" 1
cat > "$work/r.yaml" <<YAML
version: 1
admin: { listen: 127.0.0.1:$ADMIN }
log: { level: warn, format: json }
inbound: { listen: 127.0.0.1:$IN, app: 127.0.0.1:$UP }
YAML
"${REMORA_BIN:-target/release/remora}" run --workers 1 --config "$work/r.yaml" > "$work/r.log" 2>&1 & pids+=($!); r_pid=$!
wait_port "$UP"; wait_port "$IN"; wait_port "$ADMIN"
rss() { awk '/VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$r_pid/status"; }
curl -s -o /dev/null "http://127.0.0.1:$IN/" -H 'host: app'
echo "RSS before: $(rss)"

python3 - "$IN" "$COUNT" "$r_pid" "$ADMIN" <<'PY'
import socket, subprocess, sys, time, urllib.request
port, count, pid, admin = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def open_conns():
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    return next(float(l.split()[1]) for l in text.splitlines()
                if l.startswith('remora_connections_open{direction="inbound"}'))
socks = []
for _ in range(count):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    socks.append(s)
# Until Remora has accepted them all (its open connections stop growing).
last, deadline = -1, time.time() + 60
while time.time() < deadline:
    time.sleep(1)
    n = open_conns()
    if n == last:
        break
    last = n
print(f"Remora holds {int(last)} open inbound connections")
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"RSS during the flood ({count} silent connections): {int(rss) / 1024:.1f} MiB")
start = time.time()
out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                      "-H", "host: app", f"http://127.0.0.1:{port}/"], capture_output=True, text=True)
print(f"a real request during the flood: {out.stdout} in {time.time() - start:.3f} s")
for s in socks:
    s.close()
PY
sleep 3
echo "RSS 3 s after the flood: $(rss)"
sleep 12
open=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk '/^remora_connections_open\{direction="inbound"\}/ { print $2 }')
echo "RSS 15 s after the flood: $(rss) ($open connections still open)"
