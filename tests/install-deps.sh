#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, from Debian's packages and
# PyPI: a C compiler and make for the build (ring, jemalloc), the `openssl` command line (a
# non-Rust TLS client), and for the transparent-mode tests (network namespaces, real
# iptables rules) iproute2, iptables (nft and legacy), curl, redis (server and redis-cli),
# nats-server, prometheus and promtool, the nats-py client, opentelemetry-proto (the OTLP
# test receiver), kubernetes-validate (the Kubernetes schemas), jsonschema, and Node.js with the
# http-cache-tests suite. Installs only what is missing; does nothing when
# everything is there.
set -euo pipefail
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need openssl openssl
need ip iproute2
need iptables-nft iptables
need iptables-legacy iptables
need curl curl
need redis-server redis-server
need redis-cli redis-tools
need nats-server nats-server
need setpriv util-linux
# A real Prometheus server (exemplar storage) and promtool, for the metrics tests.
need prometheus prometheus
need promtool prometheus
# Node.js and npm, for the HTTP caching test suite (cache-tests.fyi) the route cache runs.
need node nodejs
need npm npm
# The build itself: ring compiles C, jemalloc runs configure and make.
need cc gcc
need make make
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
# PyPI: the NATS client, and the OpenTelemetry protobuf definitions the OTLP test receiver
# decodes spans with.
pip_missing=()
python3 -c 'import nats' >/dev/null 2>&1 || pip_missing+=('nats-py>=2.6,<3')
python3 -c 'from opentelemetry.proto.collector.trace.v1 import trace_service_pb2' >/dev/null 2>&1 ||
  pip_missing+=('opentelemetry-proto>=1.20,<2')
# The Kubernetes schemas (1.29 to the newest) that the deploy/ and `remora inject` tests
# validate manifests against.
command -v kubernetes-validate >/dev/null 2>&1 || pip_missing+=('kubernetes-validate>=1.29')
# The control file's JSON Schema is checked with the validator editors' tooling uses.
python3 -c 'import jsonschema, yaml' >/dev/null 2>&1 || pip_missing+=('jsonschema>=4.18' 'PyYAML>=6')
if [ ${#pip_missing[@]} -gt 0 ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends python3-pip
  fi
  # A Debian-managed Python refuses pip without --break-system-packages (PEP 668).
  python3 -m pip install --quiet "${pip_missing[@]}" ||
    python3 -m pip install --quiet --break-system-packages "${pip_missing[@]}"
fi
# The HTTP caching test suite itself, from the npm registry, beside the build.
hct="$(cd "$(dirname "$0")/.." && pwd)/target/http-cache-tests"
if [ ! -f "$hct/node_modules/http-cache-tests/package.json" ]; then
  mkdir -p "$hct"
  npm install --prefix "$hct" --no-audit --no-fund --silent http-cache-tests@0.4.5
fi
