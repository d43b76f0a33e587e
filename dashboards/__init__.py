"""Generated observability artefacts: Grafana dashboards (grafana/) and Prometheus rules, built from otel_leak.names."""
