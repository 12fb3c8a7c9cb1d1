# Shared helpers for scripts/demo and scripts/test. Sourced, not run.
set -euo pipefail

# need CMD PKG: makes sure CMD exists, installing Debian package PKG through
# apt-get when running as root; otherwise says exactly what is missing.
need() {
  local cmd=$1 pkg=$2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $pkg (for $cmd) with apt-get" >&2
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
    command -v "$cmd" >/dev/null 2>&1 && return 0
  fi
  echo "missing: $cmd (Debian package $pkg). Install it with: sudo apt-get install $pkg" >&2
  exit 1
}

need cargo "the Rust toolchain (https://rustup.rs)"
# etcd-client (metro-node) generates its gRPC code with protoc at build time.
need protoc protobuf-compiler
cd "$(dirname "${BASH_SOURCE[0]}")/.."
