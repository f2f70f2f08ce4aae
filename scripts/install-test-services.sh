#!/usr/bin/env bash
# System programs the tests use: Prometheus (a real server scrapes the gateway) and its
# promtool (checks our metric names). Debian's `prometheus` package; installed once.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-services: need root and apt-get to install prometheus; its tests will be skipped" >&2
  exit 0
fi
echo "install-test-services: installing prometheus (Debian package)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service on some systems; the tests start their own.
(systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true) >/dev/null 2>&1
