#!/usr/bin/env bash
# Install the Prometheus server and promtool (Debian package `prometheus`) for the tests, when missing.
# The tests start their own server on loopback with a temporary config and data directory; this script makes
# sure the package's own service is NOT left running: it installs under a policy-rc.d that refuses service
# starts (Docker's convention, honoured by invoke-rc.d and deb-systemd-invoke) and stops it if it ran anyway.
# Needs root and a reachable Debian mirror; without them it says why and exits 0, and the tests skip saying so.
set -uo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install-prometheus: not root or no apt-get; Prometheus tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod +x "$guard"
fi
install() { apt-get install -y -q --no-install-recommends prometheus; }
install || { apt-get update -q && install; }
status=$?
if [ -n "$guard" ]; then rm -f "$guard"; fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    systemctl disable --now prometheus || true
elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus stop >/dev/null 2>&1 || true
fi
if [ "$status" != 0 ]; then
    echo "install-prometheus: apt-get install prometheus failed; Prometheus tests will be skipped" >&2
fi
exit 0
