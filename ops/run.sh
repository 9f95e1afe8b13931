#!/usr/bin/env bash
# One command runs the system on this machine: services, virtualenv, migrations, then
# `iotcore run` (API + embedded broker, which writes telemetry itself, + maintenance in one
# process).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bash "$REPO_ROOT/ops/services.sh" --no-mqtt
ensure_venv ""

export IOT_ENV="${IOT_ENV:-development}"
export IOT_HTTP_HOST="${IOT_HTTP_HOST:-127.0.0.1}"
export IOT_HTTP_PORT="${IOT_HTTP_PORT:-8080}"
if [ -z "${IOT_BROKER_PORT:-}" ]; then
  # 1883 is MQTT's port; on machines where another broker (Mosquitto) holds it, use 1884.
  if port_free 1883; then IOT_BROKER_PORT=1883; else IOT_BROKER_PORT=1884; fi
fi
export IOT_BROKER_PORT
if [ -z "${IOT_METRICS_PORT:-}" ]; then
  # The internal listener (/metrics, broker hooks); 9100 is also node_exporter's port.
  if port_free 9100; then IOT_METRICS_PORT=9100; else IOT_METRICS_PORT=9101; fi
fi
export IOT_METRICS_PORT
export IOT_BROKER_HOST="${IOT_BROKER_HOST:-127.0.0.1}"

cd "$REPO_ROOT"
iotcore migrate up
log "API:    http://$IOT_HTTP_HOST:$IOT_HTTP_PORT/api/v1  (docs: /api/v1/docs, ready: /api/v1/health/ready)"
log "Console: http://$IOT_HTTP_HOST:$IOT_HTTP_PORT/"
log "Broker: mqtt://$IOT_BROKER_HOST:$IOT_BROKER_PORT  (embedded; devices log in with device_id / secret)"
log "Internal: http://$IOT_HTTP_HOST:$IOT_METRICS_PORT/metrics  (and the broker hooks; keep it private)"
exec iotcore run
