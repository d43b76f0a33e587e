#!/usr/bin/env bash
# Everything the integration tests run for real: Redis, Prometheus, Alertmanager (Debian packages) and the
# otel-leak collector distribution (built from the Go module proxy, cached by manifest hash).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in redis-server:redis-server prometheus:prometheus promtool:prometheus \
            prometheus-alertmanager:prometheus-alertmanager amtool:prometheus-alertmanager; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
if [ -x collector/build.sh ] || [ -f collector/build.sh ]; then
  bash collector/build.sh >/dev/null
fi
if [ -f collector/build-tracestore.sh ]; then
  bash collector/build-tracestore.sh >/dev/null
fi
