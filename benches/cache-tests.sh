#!/usr/bin/env bash
# The HTTP caching test suite behind cache-tests.fyi (`http-cache-tests` 0.4.5, installed by
# tests/install-deps.sh) against Remora's caching route and nginx's proxy_cache in one run,
# each in front of its own copy of the suite's origin server. Prints, for each cache, the
# required tests passed / failed / not set up and the optimal tests where a stored response
# was used (browser-only tests aside), then the tests each one failed. README's table comes
# from this.
#
#   benches/cache-tests.sh            (REMORA_BIN defaults to target/release/remora)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh

REMORA_BIN=${REMORA_BIN:-target/release/remora}
suite="$PWD/target/http-cache-tests/node_modules/http-cache-tests"
[ -f "$suite/cli.mjs" ] || { echo "$suite is missing: run tests/install-deps.sh" >&2; exit 1; }
[ -x "$REMORA_BIN" ] || cargo build --release
command -v nginx >/dev/null || { echo "nginx is missing (apt-get install nginx)" >&2; exit 1; }

read -r ORIGIN_R ORIGIN_N REMORA NGINX <<<"$(free_ports 4)"

# The suite's origin server, one per cache (it keeps per-test state).
origin() {
  (cd "$suite" && npm_config_protocol=http npm_config_port="$1" npm_config_id= \
    npm_package_config_id= npm_config_pidfile="$work/origin-$1.pid" \
    exec node server/server.mjs > "$work/origin-$1.log" 2>&1) &
  pids+=($!)
}
origin "$ORIGIN_R"
origin "$ORIGIN_N"

cat > "$work/remora.yaml" <<YAML
version: 1
log: { level: warn }
outbound:
  listen: 127.0.0.1:$REMORA
  routes:
    - name: cached
      backends: [{ service: origin }]
      cache: { max_size: 64MiB, max_object_size: 1MiB }
services:
  origin: { endpoints: ["127.0.0.1:$ORIGIN_R"] }
YAML
"$REMORA_BIN" run --config "$work/remora.yaml" > "$work/remora.log" 2>&1 &
pids+=($!)

# nginx as a shared cache: the whole URI and Host in the key, revalidation with the stored
# validators on (proxy_cache_revalidate), everything else nginx's defaults.
chmod 711 "$work"
mkdir -p "$work/nginx-cache" && chmod 777 "$work/nginx-cache"
cat > "$work/nginx.conf" <<NGX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  proxy_cache_path $work/nginx-cache keys_zone=suite:10m max_size=64m;
  server {
    listen 127.0.0.1:$NGINX;
    location / {
      proxy_pass http://127.0.0.1:$ORIGIN_N;
      proxy_http_version 1.1;
      proxy_set_header Host \$http_host;
      proxy_cache suite;
      proxy_cache_key \$scheme\$http_host\$request_uri;
      proxy_cache_revalidate on;
    }
  }
}
NGX
nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)

for p in "$ORIGIN_R" "$ORIGIN_N" "$REMORA" "$NGINX"; do wait_port "$p"; done

# Runs the suite through 127.0.0.1:PORT (origin ORIGIN) into OUT.
run_suite() {
  (cd "$suite" && npm_config_protocol=http npm_config_port="$2" npm_config_id= \
    npm_package_config_id= npm_config_base="http://127.0.0.1:$1" \
    node --no-warnings cli.mjs) > "$3"
}
run_suite "$REMORA" "$ORIGIN_R" "$work/remora.json" &
r=$!
run_suite "$NGINX" "$ORIGIN_N" "$work/nginx.json" &
n=$!
wait "$r" "$n"

cat > "$work/count.mjs" <<JS
import fs from 'fs'
import index from '$suite/tests/index.mjs'
const version = JSON.parse(fs.readFileSync('$suite/package.json')).version
console.log('http-cache-tests ' + version + ', browser-only tests aside')
console.log('cache'.padEnd(28) + 'required pass / fail / setup'.padEnd(32) + 'optimal: stored response used')
const failed = {}
for (const [name, file] of [['remora', '$work/remora.json'], ['nginx proxy_cache', '$work/nginx.json']]) {
  const results = JSON.parse(fs.readFileSync(file))
  const c = { required: [0, 0, 0, 0], optimal: [0, 0, 0, 0] }
  failed[name] = []
  for (const suite of index) {
    for (const test of suite.tests) {
      const kind = test.kind || 'required'
      if (test.browser_only || !(kind in c)) continue
      const r = results[test.id]
      c[kind][3]++
      if (r === true) c[kind][0]++
      else if (Array.isArray(r) && (r[0] === 'Setup' || r[0] === 'Retry')) c[kind][2]++
      else { c[kind][1]++; failed[name].push(kind + ' ' + test.id) }
    }
  }
  const [p, f, s, t] = c.required
  console.log(name.padEnd(28) + (p + ' / ' + f + ' / ' + s + ' (of ' + t + ')').padEnd(32) + c.optimal[0] + ' of ' + c.optimal[3])
}
for (const [name, list] of Object.entries(failed)) console.log('\n' + name + ' failed: ' + list.join(', '))
JS
node "$work/count.mjs"
