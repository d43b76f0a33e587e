"""Manual API for workers without framework instrumentation: open a task span around a unit of work.

The span is of kind CONSUMER and carries ``otel_leak.task.name``, so the task span processor measures it
even when it has a local parent. Works with sync and async functions; exceptions from the wrapped code
propagate unchanged (and are recorded on the span by the SDK).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, Iterator, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from otel_leak import names
from otel_leak.version import __version__

F = TypeVar("F", bound=Callable)


def _tracer():
    return trace.get_tracer(names.INSTRUMENTATION_SCOPE, __version__)


@contextlib.contextmanager
def task_span(name: str, attributes: dict | None = None) -> Iterator[Span]:
    """``with task_span("name"):`` runs the block inside a task span."""
    attrs = {names.ATTR_TASK_NAME: name}
    if attributes:
        attrs.update(attributes)
    with _tracer().start_as_current_span(name, kind=SpanKind.CONSUMER, attributes=attrs) as span:
        yield span


def task(name: str | Callable | None = None) -> Callable[[F], F]:
    """Decorator: each call of the function is a task span named ``name`` (default: its qualified name)."""

    def decorate(fn: F) -> F:
        task_name = name if isinstance(name, str) else f"{fn.__module__}.{fn.__qualname__}"
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                with task_span(task_name):
                    return await fn(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with task_span(task_name):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    if callable(name):  # used bare: @task
        return decorate(name)  # type: ignore[return-value]
    return decorate
