"""otel-leak: find memory leaks in long-running Python workers with OpenTelemetry.

Auto-attached by ``opentelemetry-instrument``; by hand::

    import otel_leak
    otel_leak.instrument(tracer_provider=tp, meter_provider=mp)

Workers without framework instrumentation mark their units of work as task spans::

    @otel_leak.task()                 # or @otel_leak.task("resize-image")
    def handle(job): ...

    with otel_leak.task_span("resize-image"):
        ...
"""

from __future__ import annotations

from otel_leak.manual import task, task_span
from otel_leak.version import __version__

__all__ = ["instrument", "uninstrument", "task", "task_span", "__version__"]


def instrument(tracer_provider=None, meter_provider=None, logger_provider=None) -> None:
    """Attach otel-leak to the given (or global) SDK providers. Never raises.

    Without a ``tracer_provider`` and with no global one set yet (no opentelemetry-distro, no SDK set-up of
    the application's own), it first sets up the SDK's providers from the ``OTEL_*`` variables, exporting
    only where ``OTEL_<SIGNAL>_EXPORTER`` says so. Call it after the application's own set-up, if any.
    Installed worker frameworks (RQ, Dramatiq, arq, Huey, taskiq) get their task spans
    (:mod:`otel_leak.integrations`), except those named in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``.
    """
    from otel_leak.instrumentor import LeakInstrumentor

    kwargs = {
        k: v
        for k, v in (
            ("tracer_provider", tracer_provider),
            ("meter_provider", meter_provider),
            ("logger_provider", logger_provider),
        )
        if v is not None
    }
    if LeakInstrumentor.runtime is None:  # already attached (opentelemetry-instrument, an earlier call): as is
        LeakInstrumentor().instrument(set_up_sdk=True, **kwargs)
    # Task spans for the worker frameworks installed here, as opentelemetry-instrument would load them;
    # OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names the ones to leave out, as it does there.
    from otel_leak.integrations import disabled_by_env, instrument_all

    instrument_all(disabled_by_env())


def uninstrument() -> None:
    from otel_leak.instrumentor import LeakInstrumentor

    LeakInstrumentor().uninstrument()
    from otel_leak.integrations import uninstrument_all

    uninstrument_all()
