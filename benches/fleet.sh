#!/usr/bin/env bash
# Fleet-scale control file: ROUTES routes over as many services (2 endpoints each), the size a
# sidecar of a large mesh carries. Prints how long `remora check` takes, the time from start
# to `/ready`, anonymous memory at start, how long `POST /reload` of a one-line change takes
# (median and worst of RELOADS, back to back), and anonymous memory settled after every
# RELOADS/10th reload (it should stay flat) and at most right after one.
#
#   benches/fleet.sh                 # 1,000 routes, 100 reloads
#   ROUTES=5000 RELOADS=40 benches/fleet.sh
#   REMORA_BIN=/tmp/old/remora benches/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUTES=${ROUTES:-1000}
RELOADS=${RELOADS:-100}
[ -n "${REMORA_BIN:-}" ] || cargo build --release --quiet
bin=${REMORA_BIN:-target/release/remora}

source benches/common.sh
read -r OUT ADMIN < <(free_ports 2)

# The control file; $1 is the one value each reload changes.
write_config() {
  python3 - "$ROUTES" "$OUT" "$ADMIN" "$1" > "$work/fleet.yaml.new" <<'PY'
import sys
routes, out, admin, generation = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
print("version: 1")
print(f"admin: {{ listen: 127.0.0.1:{admin} }}")
print("log: { level: warn, format: json }")
print(f"outbound:\n  listen: 127.0.0.1:{out}\n  unmatched: reject\n  routes:")
for i in range(routes):
    print(f"    - name: r{i}")
    print(f"      match: {{ host: svc{i}.ns.svc.cluster.local, path: {{ prefix: /api/v{i % 7}/ }} }}")
    print(f"      backends: [{{ service: s{i} }}]")
    print(f"      timeout: {2 + i % 3}s")
    if i == 0:
        print(f"      request_headers: {{ set: {{ x-generation: \"{generation}\" }} }}")
    if i % 4 == 0:
        print("      retry: { attempts: 2, on: [connect-failure, reset] }")
print("services:")
for i in range(routes):
    a, b = 10 + i // 250, i % 250
    print(f"  s{i}:")
    print(f"    endpoints: [\"10.{a}.{b}.1:8080\", \"10.{a}.{b}.2:8080\"]")
    if i % 3 == 0:
        print("    outlier_detection: { consecutive_failures: 5, base_ejection: 30s }")
PY
  mv "$work/fleet.yaml.new" "$work/fleet.yaml"
}
write_config 0

# Timed inside one Python process, so that no interpreter's start-up is counted.
python3 - "$bin" "$work" "$ADMIN" > "$work/started" <<'PY'
import subprocess, sys, time, urllib.request
bin, work, admin = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.monotonic()
subprocess.run([bin, "check", f"{work}/fleet.yaml"], check=True, stdout=subprocess.DEVNULL)
print(f"check ms {(time.monotonic() - t) * 1000:.0f}")
t = time.monotonic()
log = open(f"{work}/remora.log", "w")
p = subprocess.Popen([bin, "run", "--workers", "1", "--config", f"{work}/fleet.yaml"], stdout=log, stderr=log, start_new_session=True)
print(f"pid {p.pid}", flush=True)
deadline = t + 30
while time.monotonic() < deadline:
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200:
            break
    except Exception:
        time.sleep(0.001)
else:
    sys.exit("never ready")
print(f"ready ms {(time.monotonic() - t) * 1000:.0f}")
PY
pid=$(awk '/^pid/ { print $2 }' "$work/started")
pids+=("$pid")
echo "check of $ROUTES routes and $ROUTES services: $(awk '/^check/ { print $3 }' "$work/started") ms"
echo "start to /ready: $(awk '/^ready/ { print $3 }' "$work/started") ms"
anon() { awk '/RssAnon/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status"; }
echo "anonymous memory at /ready: $(anon)"
sleep 2
echo "anonymous memory 2 s later (start-up garbage purged): $(anon)"

python3 - "$ADMIN" "$RELOADS" "$pid" "$work" "$ROUTES" "$OUT" <<'PY'
import statistics, subprocess, sys, time, urllib.request
admin, reloads, pid, work, routes, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
def anon():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024
text = open(f"{work}/fleet.yaml").read()
times, memory, peak = [], [], 0.0
for n in range(1, reloads + 1):
    # The one-line change, written in place of the file (as an editor would).
    changed = text.replace('x-generation: "0"', f'x-generation: "{n}"')
    with open(f"{work}/fleet.yaml.new", "w") as f:
        f.write(changed)
    subprocess.run(["mv", f"{work}/fleet.yaml.new", f"{work}/fleet.yaml"], check=True)
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/reload", method="POST")
    t = time.time()
    body = urllib.request.urlopen(req, timeout=30).read().decode()
    times.append((time.time() - t) * 1000)
    if "r0" not in body:
        sys.exit(f"reload {n} did not report the change: {body}")
    peak = max(peak, anon())
    if n % max(1, reloads // 10) == 0:
        # What stays: freed pages are purged within a second or two.
        time.sleep(2)
        memory.append(f"{anon():.1f}")
print(f"POST /reload of a one-line change: median {statistics.median(times):.1f} ms, worst {max(times):.1f} ms over {reloads}")
print(f"anonymous memory 2 s after every {max(1, reloads // 10)}th reload (MiB): {' '.join(memory)}")
print(f"anonymous memory at most, right after a reload: {peak:.1f} MiB")
PY
