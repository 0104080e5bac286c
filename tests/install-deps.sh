#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain: the `openssl` command line
# (one test checks that a non-Rust TLS client interoperates). Does nothing when it is there.
set -euo pipefail
if command -v openssl >/dev/null 2>&1; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends openssl
