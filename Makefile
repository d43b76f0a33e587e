# The two commands the README starts with. Both do all the set-up they need on a fresh machine.
.PHONY: demo test venv services generate

venv:
	bash scripts/setup-python.sh

services:
	bash scripts/setup-services.sh

# The main job on the embedded default: no collector, no server.
demo: venv
	.venv/bin/otel-leak run --report out/demo-report.json --html out/demo-report.html -- .venv/bin/python examples/demo_worker.py

# The whole test suite, with the real Redis, Prometheus, Alertmanager and collector. Two pytest-xdist workers,
# a test file each at a time (each worker starts its own Redis, Prometheus, collector... on free ports): most
# integration tests wait on real processes, so two at once take ~0.7 of the serial time on two cores.
test: venv services
	.venv/bin/pytest -q -n 2 --dist loadfile --durations=30

# Every generated file from its sources (dashboards/mixin.py, otel_leak/names.py, collector/, ...): Prometheus
# rules, Grafana dashboards and Grafana-managed alerting, the Kubernetes manifests (deploy/k8s/generate.py reads
# the committed generated files) and canary-analysis templates (deploy/k8s/rollouts.py, from otel_leak/gate.py);
# then promtool checks every rule file, and the README's settings table is rewritten from otel_leak.config.
# tests/test_grafana_alerts.py runs it with GENERATED and K8S_OUT in a temp dir and compares with the committed files.
PYTHON ?= .venv/bin/python
PROMTOOL ?= $(shell command -v promtool || echo /usr/bin/promtool)
GENERATED ?= dashboards/generated
K8S_OUT ?= deploy/k8s
README ?= README.md
generate:
	$(PYTHON) -m dashboards.rules --out $(GENERATED)
	$(PYTHON) -m dashboards.grafana --out $(GENERATED)/grafana
	$(PYTHON) deploy/k8s/generate.py --out $(K8S_OUT)
	$(PYTHON) deploy/k8s/rollouts.py --out $(K8S_OUT)/rollouts
	$(PROMTOOL) check rules $(GENERATED)/prometheus-rules.yaml $(GENERATED)/prometheus-rules.test.yaml \
		$(GENERATED)/grafana/prometheus-recording-rules.yaml
	$(PYTHON) -m otel_leak.config --write $(README)
	$(PYTHON) -m otel_leak.detector.patterns --write docs/patterns.md
