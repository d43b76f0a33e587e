"""``opentelemetry_environment_variables`` entry point.

``opentelemetry-instrument`` turns every ``OTEL_*`` attribute of this module into a command-line flag
(``--python_leak_max_task_types`` ...), so ``opentelemetry-instrument --help`` lists otel-leak's settings.
The names come from the declarations in :mod:`otel_leak.config` (and the detector's settings).
"""

from otel_leak import config as _config

try:  # the detector declares its own settings; absent or broken it must not hide the others
    import otel_leak.detector.settings  # noqa: F401
except Exception:  # pragma: no cover
    pass

globals().update({_env: _env for _env in _config.SETTINGS})
