# Shared by benches/load.sh and benches/mtls.sh (sourced, not run): a temporary folder
# ($work) and the processes to stop at exit (pids), both cleaned up by an EXIT trap; free
# ports, waiting for a port, the nginx upstream, and wrk's figures.

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Prints N free TCP ports on 127.0.0.1.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# Waits until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
  for _ in $(seq 200); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2; exit 1
}

# Starts the upstream on PORT pinned to CPU: nginx answering a 20-byte body.
start_upstream() {
  cat > "$work/upstream.conf" <<NGX
worker_processes 1; daemon off; pid $work/upstream.pid; error_log $work/upstream.err warn;
events { worker_connections ${UPSTREAM_CONNECTIONS:-4096}; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$1;
    location / { return 200 "hello from upstream\n"; }
    # For the cache hit path: the same answer, cacheable for an hour.
    location /cached { add_header Cache-Control "max-age=3600"; return 200 "hello from upstream\n"; }
  }
}
NGX
  taskset -c "$2" nginx -c "$work/upstream.conf" -p "$work" &
  pids+=($!)
}

# Reads wrk --latency output on stdin; prints "rps p50_ms p99_ms".
wrk_figures() {
  python3 -c '
import re, sys
t = sys.stdin.read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        sys.exit("cannot read wrk latency %r in:\n%s" % (v, t))
    n, u = m.groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[u]
rps = re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)
p50 = re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1)
p99 = re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if bad: print("warning: %s non-2xx responses" % bad.group(1), file=sys.stderr)
print(rps, ms(p50), ms(p99))'
}
