"""The framework integrations' shared base against the real SDK and the real task span processor."""

from __future__ import annotations

import re
import tomllib

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from otel_leak import integrations, names
from otel_leak.integrations import _base
from tests.conftest import ROOT
from tests.frameworks import sdk_env


@pytest.fixture
def env(monkeypatch):
    with sdk_env(monkeypatch) as e:
        yield e


def test_job_span_is_a_measured_consumer_span_with_messaging_attributes(env):
    job = _base.Job("app.jobs.resize", "rq", queue="images", message_id="j-1").start()
    assert trace.get_current_span() is job.span  # current while the job runs
    job.end()
    assert not trace.get_current_span().is_recording()  # and no longer after
    (span,) = env.exporter.get_finished_spans()
    a = span.attributes
    assert span.kind is SpanKind.CONSUMER and span.name == "process app.jobs.resize"
    assert a[names.ATTR_TASK_NAME] == "app.jobs.resize"
    assert a[names.ATTR_MESSAGING_SYSTEM] == "rq" and a[names.ATTR_MESSAGING_OPERATION_TYPE] == "process"
    assert a[names.ATTR_MESSAGING_DESTINATION] == "images" and a[names.ATTR_MESSAGING_MESSAGE_ID] == "j-1"
    assert names.SPAN_RSS_DELTA in a and names.SPAN_RSS_END in a  # measured by the processor
    assert env.processor.stats.counts == {"app.jobs.resize": 1}


def test_a_job_under_a_local_parent_is_still_measured(env):
    with env.tracer.start_as_current_span("outer"):  # INTERNAL, a local root: not a task span
        _base.run_job(lambda: None, (), {}, _base.Job("nested", "huey"))
    spans = env.spans()
    assert names.SPAN_RSS_DELTA in spans["process nested"].attributes
    assert names.SPAN_RSS_DELTA not in spans["outer"].attributes
    assert spans["process nested"].parent.span_id == spans["outer"].context.span_id


def test_no_second_span_when_a_task_span_is_already_current(env):
    with env.tracer.start_as_current_span("run/celery-like", kind=SpanKind.CONSUMER):
        assert _base.run_job(lambda x: x * 2, (21,), {}, _base.Job("t", "dramatiq")) == 42
    assert [s.name for s in env.exporter.get_finished_spans()] == ["run/celery-like"]


def test_a_failing_job_raises_unchanged_and_its_span_says_error(env):
    class Boom(Exception):
        pass

    err = Boom("no")
    with pytest.raises(Boom) as info:
        _base.run_job(lambda: (_ for _ in ()).throw(err), (), {}, _base.Job("t", "rq"))
    assert info.value is err
    (span,) = env.exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception"


async def _async_job(x):
    return x + 1


def test_async_job_and_end_without_start_or_twice(env):
    import asyncio

    assert asyncio.run(_base.run_job_async(_async_job, (1,), {}, _base.Job("a", "arq"))) == 2
    job = _base.Job("never-started", "huey")
    job.end()
    job.end()  # nothing, no exception
    assert [s.name for s in env.exporter.get_finished_spans()] == ["process a"]


def test_span_creation_failing_never_reaches_the_job(env, monkeypatch, caplog):
    class Broken:
        def start_span(self, *a, **k):
            raise RuntimeError("tracer broken")

    monkeypatch.setattr(_base, "_tracer", Broken())
    monkeypatch.setattr(_base, "_warned", set())
    assert _base.run_job(lambda: "ran", (), {}, _base.Job("t", "rq")) == "ran"
    assert _base.run_job(lambda: "ran", (), {}, _base.Job("t", "rq")) == "ran"
    warnings = [r for r in caplog.records if "cannot start a rq task span" in r.getMessage()]
    assert len(warnings) == 1  # once


def test_every_integration_is_an_entry_point_and_the_other_way_round():
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["opentelemetry_instrumentor"]
    ours = {k: v for k, v in eps.items() if k != "otel_leak"}
    assert ours == integrations.INTEGRATIONS
    for name, target in ours.items():
        module, _, cls = target.partition(":")
        inst = integrations._load(target)()
        assert re.fullmatch(r"otel_leak_\w+", name) and inst.system == name.removeprefix("otel_leak_")
        assert inst.instrumentation_dependencies(), name  # a requirement on its framework


def test_disabled_names_come_from_the_standard_variable():
    env = {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": " otel_leak_rq, redis ,,"}
    assert integrations.disabled_by_env(env) == {"otel_leak_rq", "redis"}
    assert integrations.disabled_by_env({}) == frozenset()


def test_a_framework_is_patched_when_the_application_imports_it_never_imported_by_otel_leak():
    """A fresh interpreter: otel_leak.instrument() imports none of the installed frameworks; the one the
    application imports afterwards is patched as it is imported; one uninstrumented before its import is not."""
    import subprocess
    import sys

    code = """
import sys
import otel_leak
otel_leak.instrument()
print(sorted(m for m in ("rq", "dramatiq", "huey", "arq", "taskiq", "uvicorn") if m in sys.modules))
from otel_leak.integrations.dramatiq import DramatiqInstrumentor
DramatiqInstrumentor().uninstrument()
import huey.api, dramatiq.worker
print(getattr(huey.api.Huey.__dict__["_execute"], "_otel_leak", False),
      getattr(dramatiq.worker.Worker.__init__, "_otel_leak", False))
"""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["[]", "True False"], p.stdout + p.stderr
