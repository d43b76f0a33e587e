"""The command's environment under ``otel-leak run``: what ``opentelemetry-instrument`` would set, plus the
detector's variables, and the executable the command names. Pure functions of their arguments."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

from otel_leak import config

SIGNALS = ("TRACES", "METRICS", "LOGS")


def sitecustomize_dir() -> str | None:
    """Directory of opentelemetry-instrument's ``sitecustomize`` (what it prepends to PYTHONPATH)."""
    try:
        spec = importlib.util.find_spec("opentelemetry.instrumentation.auto_instrumentation")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def exporter_env(environ: dict[str, str]) -> dict[str, str]:
    """``OTEL_<SIGNAL>_EXPORTER=none`` for every signal the user configured nowhere."""
    generic = any(environ.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT",))
    out = {}
    for sig in SIGNALS:
        if environ.get(f"OTEL_{sig}_EXPORTER"):
            continue
        if generic or environ.get(f"OTEL_EXPORTER_OTLP_{sig}_ENDPOINT"):
            continue
        out[f"OTEL_{sig}_EXPORTER"] = "none"
    return out


def build_env(environ: dict[str, str], report_dir: str, cwd: str | None = None) -> dict[str, str]:
    env = dict(environ)
    env["OTEL_PYTHON_LEAK_DETECTOR"] = "true"
    env["OTEL_PYTHON_LEAK_REPORT_DIR"] = report_dir
    if not env.get(config.SETUP_SDK.env, "").strip():
        env[config.SETUP_SDK.env] = "true"
    env.update(exporter_env(environ))
    # Same PYTHONPATH manipulation as opentelemetry-instrument's run().
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    cwd = cwd or os.getcwd()
    if cwd not in parts:
        parts.insert(0, cwd)
    site = sitecustomize_dir()
    if site:
        parts = [site] + [p for p in parts if p != site]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", os.defpath).split(os.pathsep)
    if bindir and bindir not in path:
        env["PATH"] = os.pathsep.join([bindir] + path)
    return env


def resolve(command: str, env: dict[str, str]) -> tuple[str | None, str | None]:
    """(path, problem): the executable for ``command`` under the child's PATH, or why there is none."""
    if os.sep in command:
        if not os.path.exists(command):
            return None, "not_found"
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            return None, "not_executable"
        return command, None
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        return None, "not_found"
    return found, None


