"""OTEL_PYTHON_LEAK_* settings: bad values warn once, naming the variable and the default used."""

from __future__ import annotations

import logging
import subprocess
import sys

from otel_leak import config
from tests.conftest import VENV_BIN


def test_valid_values_parse():
    env = {
        "OTEL_PYTHON_LEAK_MAX_TASK_TYPES": "7",
        "OTEL_PYTHON_LEAK_ENABLED": "off",
        "OTEL_PYTHON_LEAK_TASK_SPAN_KINDS": "consumer, internal",
        "OTEL_PYTHON_LEAK_FLOOR_WINDOW": "60",
    }
    assert config.get(config.MAX_TASK_TYPES, env) == 7
    assert config.get(config.ENABLED, env) is False
    assert config.get(config.TASK_SPAN_KINDS, env) == ("consumer", "internal")
    assert config.get(config.FLOOR_WINDOW, env) == 60.0


def test_invalid_values_warn_once_with_variable_and_default(caplog):
    config._warned.clear()
    bad = {
        "OTEL_PYTHON_LEAK_MAX_TASK_TYPES": "lots",
        "OTEL_PYTHON_LEAK_SAMPLE_INTERVAL": "-1",
        "OTEL_PYTHON_LEAK_ENABLED": "maybe",
        "OTEL_PYTHON_LEAK_TASK_SPAN_NAMES": "([unclosed",
    }
    with caplog.at_level(logging.WARNING, logger="otel_leak"):
        for _ in range(3):
            assert config.get(config.MAX_TASK_TYPES, bad) == 100
            assert config.get(config.SAMPLE_INTERVAL, bad) == 1.0
            assert config.get(config.ENABLED, bad) is True
            assert config.get(config.TASK_SPAN_NAMES, bad) == ()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4
    for var, default in [
        ("OTEL_PYTHON_LEAK_MAX_TASK_TYPES", "100"),
        ("OTEL_PYTHON_LEAK_SAMPLE_INTERVAL", "1.0"),
        ("OTEL_PYTHON_LEAK_ENABLED", "True"),
        ("OTEL_PYTHON_LEAK_TASK_SPAN_NAMES", "()"),
    ]:
        (msg,) = [m for m in messages if var in m]
        assert f"default {default}" in msg


def test_opentelemetry_instrument_help_lists_the_settings():
    out = subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for env in config.SETTINGS:
        flag = "--" + env.removeprefix("OTEL_PYTHON_").lower()  # how opentelemetry-instrument names it
        assert flag in out, f"{flag} missing from opentelemetry-instrument --help"


def test_readme_documents_every_setting_as_declared():
    from tests.conftest import ROOT

    assert config.markdown_table() in (ROOT / "README.md").read_text(), (
        "README settings table is stale: run `make generate`"
    )
