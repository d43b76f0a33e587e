# The two commands the README starts with. Both do all the set-up they need on a fresh machine.
.PHONY: demo test venv services

venv:
	bash scripts/setup-python.sh

services:
	bash scripts/setup-services.sh

# The main job on the embedded default: no collector, no server.
demo: venv
	.venv/bin/otel-leak run --report out/demo-report.json --html out/demo-report.html -- .venv/bin/python examples/demo_worker.py

# The whole test suite, with the real Redis, Prometheus, Alertmanager and collector.
test: venv services
	.venv/bin/pytest -q
