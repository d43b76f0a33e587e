"""Task spans for worker frameworks without a maintained OpenTelemetry instrumentation (and uvicorn's exit).

One instrumentor per framework, each an ``opentelemetry_instrumentor`` entry point named ``otel_leak_<name>``
(so ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_leak_rq`` turns one off), each doing nothing unless its
framework is installed in a supported version. Each makes one CONSUMER span per job, named after the job
(:mod:`otel_leak.integrations._base`), which the task span processor then measures like any other task span;
when a span of kind CONSUMER or SERVER is already current where the job starts (another instrumentation made
one), that span is the task span and no second one is made.
"""

from __future__ import annotations

# entry point name -> "module:class"; pyproject.toml declares the same entry points.
INTEGRATIONS = {
    "otel_leak_rq": "otel_leak.integrations.rq:RQInstrumentor",
    "otel_leak_dramatiq": "otel_leak.integrations.dramatiq:DramatiqInstrumentor",
    "otel_leak_arq": "otel_leak.integrations.arq:ArqInstrumentor",
    "otel_leak_huey": "otel_leak.integrations.huey:HueyInstrumentor",
    "otel_leak_taskiq": "otel_leak.integrations.taskiq:TaskiqInstrumentor",
    # not a task span maker: uvicorn's SIGTERM path skips atexit; this flushes and writes the final report
    "otel_leak_uvicorn": "otel_leak.integrations.uvicorn:UvicornInstrumentor",
}


def disabled_by_env(environ=None) -> frozenset[str]:
    """The entry point names in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (comma-separated)."""
    import os

    raw = (environ if environ is not None else os.environ).get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def _load(target: str):
    import importlib

    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def instrument_all(disabled: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Instrument every installed framework not in ``disabled`` (what ``otel_leak.instrument()`` does);
    the names of those instrumented. Never raises."""
    import logging

    done = []
    for name, target in INTEGRATIONS.items():
        if name in disabled:
            continue
        try:
            inst = _load(target)()
            if not inst.is_instrumented_by_opentelemetry:  # else already done (by opentelemetry-instrument)
                inst.instrument()
            if inst.is_instrumented_by_opentelemetry:
                done.append(name)
        except Exception as exc:  # an integration that cannot load must not stop the others
            logging.getLogger("otel_leak").warning("otel-leak: %s could not load (%s: %s)", name, type(exc).__name__, exc)
    return done


def uninstrument_all() -> None:
    """Undo :func:`instrument_all` (each integration restores what it patched). Never raises."""
    for target in INTEGRATIONS.values():
        try:
            inst = _load(target)()
            if inst.is_instrumented_by_opentelemetry:
                inst.uninstrument()
        except Exception:
            pass
