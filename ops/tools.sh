#!/usr/bin/env bash
# Operations tooling the tests use: Prometheus and promtool (alert rules, the scrape test) and
# Alertmanager's amtool (its configuration). Debian packages; installed (apt) when absent.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

missing=()
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt_install --no-install-recommends "${missing[@]}"
  # The packages start their services where systemd runs; the tests start their own.
  for service in prometheus prometheus-alertmanager; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
      systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
fi
